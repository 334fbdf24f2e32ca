"""The Python side of the benchmark (tests/bench/run, systems `gridfn-py`
and `gridfn-py-reuse`): the same per-event work as tests/bench/handler
(Rust) and the Flask webhook (python_app.py): parse the event's data as a
Storage BlobCreated payload, check it, succeed."""

from gridfn import Reject, Success, handler


@handler
def handle(event, delivery):
    try:
        blob = event.json()
    except ValueError as error:
        return Reject(f"not a BlobCreated payload: {error}")
    if not isinstance(blob, dict) or not isinstance(blob.get("contentLength"), int):
        return Reject("not a BlobCreated payload")
    if not blob.get("url"):
        return Reject("BlobCreated without a url")
    return Success()
