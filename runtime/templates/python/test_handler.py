"""{{name}}'s unit tests, under plain CPython: gridfn.testing stands in for gridfn."""

import json
from pathlib import Path

from {{module}} import handle

from gridfn import Reject, Success, testing

# events/sample.json is an Event Grid delivery of one event.
SAMPLE = json.loads((Path(__file__).parent / "events" / "sample.json").read_text())[0]


def sample_event(data=SAMPLE["data"]):
    return testing.event(SAMPLE["eventType"], data, id=SAMPLE["id"], source=SAMPLE["topic"], subject=SAMPLE["subject"])


def test_the_sample_order_is_logged():
    host = testing.Host()
    assert host.run(handle, sample_event()) == Success()
    assert host.messages("info") == ["order o-1001 received, amount 42.50 (Contoso.Orders.OrderPlaced e-1001)"]


def test_data_that_is_not_an_order_is_rejected():
    host = testing.Host()
    assert host.run(handle, sample_event({"amount": 1})) == Reject("not an order: orderId is missing")
    assert host.run(handle, sample_event({"orderId": "o-1", "amount": "lots"})) == Reject(
        "not an order: amount is not a number"
    )
    assert host.logs == []
