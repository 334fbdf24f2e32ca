"""{{name}}: a gridfn handler. It logs each order it receives, and rejects an
event whose data is not an order: gridfn dead-letters it instead of retrying,
since no retry can fix it.

Test: {{test}}
Build: {{build}}
"""

from gridfn import Reject, Success, handler, log


def parse_order(event):
    """The order in the event's data as (orderId, amount); ValueError says why it is not one."""
    data = event.json()
    if not isinstance(data, dict) or not isinstance(data.get("orderId"), str):
        raise ValueError("orderId is missing")
    if not isinstance(data.get("amount"), (int, float)):
        raise ValueError("amount is not a number")
    return data["orderId"], data["amount"]


@handler
def handle(event, delivery):
    try:
        order_id, amount = parse_order(event)
    except ValueError as why:
        return Reject(f"not an order: {why}")
    log.info(f"order {order_id} received, amount {amount:.2f} ({event.type} {event.id})")
    return Success()
