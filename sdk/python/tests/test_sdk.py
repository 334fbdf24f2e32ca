"""The SDK under plain CPython: what a handler's unit tests rely on."""

import sys
import types

import pytest

import gridfn
from gridfn import Delivery, Reject, Retry, Success, http, kv, log, publish, testing
from gridfn.build import BATCH_WORLD, WIT, WORLD, command, world_of


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


def test_kv_writes_of_a_retried_run_are_dropped_as_gridfn_drops_them():
    def counting(answer):
        def handle(event, delivery):
            seen = kv.increment("seen")
            assert kv.get("seen") == str(seen).encode(), "a run reads its own writes"
            return answer
        return handle

    host = testing.Host(kv=True)
    assert host.run(counting(Success()), testing.event("Contoso.T")) == Success()
    assert host.run(counting(Retry("later")), testing.event("Contoso.T")) == Retry("later")
    assert host.kv_data == {"seen": b"1"}, "the retried run left nothing"
    assert host.run(counting(Reject("no")), testing.event("Contoso.T")) == Reject("no")
    assert host.kv_data == {"seen": b"2"}, "a rejection is recorded with its writes"

    def batch(answers):
        def handle_batch(events, delivery):
            kv.increment("seen", len(events))
            return answers
        return handle_batch

    two = [testing.event("Contoso.T"), testing.event("Contoso.T")]
    host.run_batch(batch([Retry("a"), Retry("b")]), two)
    host.run_batch(batch([Success()]), two)
    assert host.kv_data == {"seen": b"2"}, "all retried, or the wrong length: nothing"
    host.run_batch(batch([Retry("a"), Success()]), two)
    assert host.kv_data == {"seen": b"4"}, "one recorded: the call's writes go with it"


def test_handler_defines_the_wit_world_componentize_py_exports():
    module = types.ModuleType("one_handler")
    sys.modules["one_handler"] = module
    try:

        def handle(event, delivery):
            return Reject("no")

        handle.__module__ = "one_handler"
        assert gridfn.handler(handle) is handle
        assert module.WitWorld.gridfn_exports == {"handle": handle}
        assert not hasattr(module.WitWorld, "handle_batch"), "built for the handler world"
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


def test_a_batch_answers_one_outcome_per_event_in_order():
    def handle_batch(events, delivery):
        log.info(f"call of {len(events)} attempt={delivery.attempt}")
        return [Reject("empty") if not e.json() else Retry("later", after_ms=5) if e.id == "b" else Success() for e in events]

    host = testing.Host(handler="bulk")
    events = [testing.event("A", {"n": 1}, id="a"), testing.event("A", {"n": 2}, id="b"), testing.event("A", {}, id="c")]
    assert host.run_batch(handle_batch, events, Delivery(handler="bulk", attempt=1)) == [
        Success(),
        Retry("later", after_ms=5),
        Reject("empty"),
    ]
    assert host.messages() == ["call of 3 attempt=1"]


def test_a_batch_that_raises_or_answers_no_list_retries_every_event(capsys):
    events = [testing.event("A", {}, id="a"), testing.event("A", {}, id="b")]

    def raises(events, delivery):
        raise ValueError("bulk insert failed")

    assert testing.Host().run_batch(raises, events) == [Retry("handler raised ValueError: bulk insert failed")] * 2
    assert "bulk insert failed" in capsys.readouterr().err, "the traceback goes to stderr, which gridfn logs"
    assert testing.Host().run_batch(lambda e, d: Success(), events) == [
        Retry("handle_batch returned Success(), not a list of outcomes")
    ] * 2
    # A generator is a list of outcomes too; an item that is not one retries its own event.
    answers = testing.Host().run_batch(lambda e, d: (Success() if x.id == "a" else None for x in e), events)
    assert answers == [Success(), Retry("handle_batch answered None for event 1, not Success(), Retry(...) or Reject(...)")]


def test_a_batch_of_the_wrong_length_is_answered_as_it_is_for_gridfn_to_retry():
    events = [testing.event("A", {}, id="a"), testing.event("A", {}, id="b")]
    assert testing.Host().run_batch(lambda e, d: [Success()], events) == [Success()]


def test_a_batch_handler_cannot_publish_even_where_single_events_may():
    def publishes(events, delivery):
        publish.event("Next", {})
        return [Success() for _ in events]

    host = testing.Host(publish=True)
    answers = host.run_batch(publishes, [testing.event("A", {})])
    assert answers == [Retry("handler raised Denied: a batch handler cannot publish (gridfn refuses publish with batch)")]
    assert host.published == []
    assert host.run(lambda e, d: publishes([e], d)[0], testing.event("A", {})) == Success(), "run still grants it"


class _FakeWitTypes:
    """What componentize-py generates for gridfn:handler/types, as far as the SDK uses it."""

    Outcome_Success = type("Outcome_Success", (), {"__eq__": lambda a, b: type(a) is type(b)})
    Outcome_Reject = staticmethod(lambda reason: ("reject", reason))
    Outcome_Retry = staticmethod(lambda retry: ("retry", retry))
    Retry = staticmethod(lambda reason, after_ms: (reason, after_ms))


def _wit_event(id, data=b"{}"):
    return types.SimpleNamespace(
        id=id, event_type="A", source="/s", subject=None, time=None,
        data_content_type=None, data_version=None, data=data, extensions=[],
    )  # fmt: skip


def _wit_delivery(attempt=0):
    return types.SimpleNamespace(handler="h", attempt=attempt, subscription=None, replay=False)


@pytest.fixture
def module(monkeypatch):
    """A handler module to decorate functions in, with stand-ins for the WIT bindings."""
    from gridfn import _component

    monkeypatch.setattr(_component, "wit_types", _FakeWitTypes, raising=False)
    module = types.ModuleType("batch_module")
    monkeypatch.setitem(sys.modules, "batch_module", module)
    with testing.Host():  # the component installs the real host only when none is
        yield module


def _in(module, fn):
    fn.__module__ = module.__name__
    return fn


def test_batch_handler_exports_handle_batch_and_handle_as_a_batch_of_one(module):
    seen = []

    def handle_batch(events, delivery):
        seen.append([e.id for e in events])
        return [Reject(f"{e.id} at {delivery.attempt}") for e in events]

    assert gridfn.batch_handler(_in(module, handle_batch)) is handle_batch
    world = module.WitWorld()
    answers = world.handle_batch([_wit_event("a"), _wit_event("b")], _wit_delivery(2))
    assert answers == [("reject", "a at 2"), ("reject", "b at 2")]
    assert world.handle(_wit_event("c"), _wit_delivery()) == ("reject", "c at 0")
    assert seen == [["a", "b"], ["c"]]


def test_a_batch_of_one_that_is_not_answered_with_one_outcome_is_retried(module):
    gridfn.batch_handler(_in(module, lambda events, delivery: []))
    answer = module.WitWorld().handle(_wit_event("a"), _wit_delivery())
    assert answer == ("retry", ("the batch handler answered 0 outcomes for one event", None))


def test_a_module_may_have_a_handler_and_a_batch_handler_but_one_of_each(module):
    def handle(event, delivery):
        return Success()

    def handle_batch(events, delivery):
        return [Reject("batched") for _ in events]

    gridfn.batch_handler(_in(module, handle_batch))
    gridfn.handler(_in(module, handle))
    world = module.WitWorld()
    assert world.handle(_wit_event("a"), _wit_delivery()) == _FakeWitTypes.Outcome_Success()
    assert world.handle_batch([_wit_event("b")], _wit_delivery()) == [("reject", "batched")]

    def another(events, delivery):
        return []

    with pytest.raises(RuntimeError, match="already has .*handle_batch; one per module"):
        gridfn.batch_handler(_in(module, another))


def test_the_build_picks_the_batch_world_for_a_batch_handler(tmp_path):
    (tmp_path / "single_mod.py").write_text(
        "from gridfn import Success, handler\n@handler\ndef handle(e, d):\n    return Success()\n"
    )
    (tmp_path / "batch_mod.py").write_text(
        "from gridfn import Success, batch_handler\n@batch_handler\ndef handle_batch(es, d):\n    return []\n"
    )
    try:
        assert world_of("single_mod", [str(tmp_path)]) == WORLD
        assert world_of("batch_mod", [str(tmp_path)]) == BATCH_WORLD
    finally:
        sys.path.remove(str(tmp_path.resolve()))
        sys.modules.pop("single_mod", None)
        sys.modules.pop("batch_mod", None)
    argv = command("batch_mod", [str(tmp_path)], "out.wasm", BATCH_WORLD)
    assert argv[argv.index("-w") + 1] == "gridfn:python/batch-handler@0.1.0"
    assert "world batch-handler {" in (WIT / "world.wit").read_text()
