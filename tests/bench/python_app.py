"""The Python peer of tests/bench/run: an Event Grid webhook written the way
the Event Grid labs do it. Flask behind gunicorn; each event parsed with the
azure-eventgrid SDK (EventGridEvent.from_dict), then its BlobCreated data
checked. Answers the subscription validation handshake too.

    gunicorn -w 4 -k gthread --threads 8 -b 127.0.0.1:8084 python_app:app
"""

from azure.eventgrid import EventGridEvent
from flask import Flask, jsonify, request

app = Flask(__name__)


@app.get("/healthz")
def healthz():
    return "ok"


@app.post("/api/events")
def events():
    kind = request.headers.get("aeg-event-type", "")
    batch = request.get_json(force=True)
    if not isinstance(batch, list):
        batch = [batch]
    if kind.lower() == "subscriptionvalidation":
        code = batch[0].get("data", {}).get("validationCode")
        return jsonify(validationResponse=code)
    if kind.lower() != "notification":
        return jsonify(error="aeg-event-type must be Notification"), 400
    succeeded = rejected = 0
    for raw in batch:
        event = EventGridEvent.from_dict(raw)
        data = event.data
        if event.id and isinstance(data, dict) and data.get("url") and "contentLength" in data:
            succeeded += 1
        else:
            rejected += 1
    return jsonify(succeeded=succeeded, duplicates=0, rejected=rejected, unmatched=0)
