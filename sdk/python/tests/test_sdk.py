"""The SDK under plain CPython: what a handler's unit tests rely on."""

import sys
import types

import pytest

import gridfn
from gridfn import Delivery, Reject, Retry, Success, http, kv, log, publish, testing
from gridfn.build import WIT, command


def test_capabilities_outside_a_host_fail_loudly():
    with pytest.raises(RuntimeError, match="gridfn.testing"):
        log.info("nobody listens")


def test_an_exception_or_a_non_outcome_becomes_a_retry_like_a_trap(capsys):
    def raises(event, delivery):
        raise KeyError("contentId")

    host = testing.Host()
    assert host.run(raises, testing.event("A", {})) == Retry("handler raised KeyError: 'contentId'")
    assert "KeyError" in capsys.readouterr().err, "the traceback goes to stderr, which gridfn logs"
    assert host.run(lambda e, d: None, testing.event("A", {})) == Retry(
        "handler returned None, not Success(), Retry(...) or Reject(...)"
    )


def test_published_events_are_kept_only_when_the_handler_succeeds():
    def publishes_then(outcome):
        def handle(event, delivery):
            publish.event("Next", {"n": 1}, subject="s")
            return outcome

        return handle

    host = testing.Host(publish=True)
    host.run(publishes_then(Retry("later")), testing.event("A", {}))
    assert host.published == []
    host.run(publishes_then(Success()), testing.event("A", {}))
    assert [(e.type, e.subject, e.data) for e in host.published] == [("Next", "s", b'{"n":1}')]
    with pytest.raises(publish.Denied), testing.Host():
        publish.event("Next", {})


def test_http_reaches_only_the_granted_origins():
    answers = {"https://api.example.com": lambda request: http.Response(201, [("x", b"1")], request.body)}
    host = testing.Host(http=answers)
    with host:
        response = http.post("https://API.example.com/v1/items?x=1", json={"a": 1})
        assert (response.status, response.json(), response.header("X")) == (201, {"a": 1}, "1")
        with pytest.raises(http.Denied):
            http.get("https://api.example.com:8443/")
        with pytest.raises(http.Denied):
            http.get("http://api.example.com/")
        with pytest.raises(http.InvalidRequest):
            http.get("api.example.com/")
    assert [(r.method, r.url, r.headers) for r in host.requests] == [
        ("POST", "https://API.example.com/v1/items?x=1", [("content-type", "application/json")])
    ]


def test_kv_counts_as_text_and_log_fields_are_text():
    host = testing.Host(kv={"count/a": b"41"})
    with host:
        assert kv.increment("count/a") == 42
        assert kv.get("count/a") == b"42"
        kv.set("name", "zoë")
        assert kv.get("name") == "zoë".encode()
        with pytest.raises(kv.TooLarge):
            kv.set("k" * 513, b"")
        log.warn("slow", took_ms=1200)
    assert host.logs == [testing.LogLine("warn", "slow", [("took_ms", "1200")])]


def test_handler_defines_the_wit_world_componentize_py_exports():
    module = types.ModuleType("one_handler")
    sys.modules["one_handler"] = module
    try:

        def handle(event, delivery):
            return Reject("no")

        handle.__module__ = "one_handler"
        assert gridfn.handler(handle) is handle
        assert module.WitWorld.handler_name.endswith(".handle")
        assert gridfn.handler(handle) is handle, "decorating it again (a reloaded module) is fine"

        def other(event, delivery):
            return Success()

        other.__module__ = "one_handler"
        with pytest.raises(RuntimeError, match="one per module"):
            gridfn.handler(other)
    finally:
        del sys.modules["one_handler"]


def test_the_build_targets_the_shipped_world():
    argv = command("my_handler", ["handlers/mine"], "out.wasm")
    assert argv[argv.index("-d") + 1] == str(WIT)
    assert argv[argv.index("-w") + 1] == "gridfn:python/handler@0.1.0"
    assert (WIT / "world.wit").is_file() and (WIT / "deps" / "gridfn-handler" / "handler.wit").is_file()
    assert argv[argv.index("componentize") + 1 :][:3] == ["my_handler", "-p", "handlers/mine"]
    assert argv[-2:] == ["-o", "out.wasm"]


def test_a_delivery_says_which_handler_and_attempt():
    seen = []
    testing.Host(handler="audit").run(lambda e, d: seen.append(d) or Success(), testing.event("A", {}))
    assert seen == [Delivery(handler="audit", attempt=0)]
