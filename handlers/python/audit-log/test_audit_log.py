from audit_log import handle

from gridfn import Delivery, Retry, Success, testing


def test_logs_each_event_with_its_running_count_per_type():
    host = testing.Host(kv=True)
    blob = testing.event("Microsoft.Storage.BlobCreated", {"url": "u"}, id="b-1", source="/acct", subject="/c/a.md")
    other = testing.event("Contoso.Other", {}, id="o-1", source="/x")

    assert host.run(handle, blob) == Success()
    assert host.run(handle, blob, Delivery(handler="audit", attempt=2)) == Success()
    assert host.run(handle, other) == Success()

    assert host.messages("info") == [
        "audit: Microsoft.Storage.BlobCreated b-1 from /acct subject=/c/a.md attempt=0 bytes=12 seen=1",
        "audit: Microsoft.Storage.BlobCreated b-1 from /acct subject=/c/a.md attempt=2 bytes=12 seen=2",
        "audit: Contoso.Other o-1 from /x subject=- attempt=0 bytes=2 seen=1",
    ]
    assert host.kv_data == {"count/Microsoft.Storage.BlobCreated": b"2", "count/Contoso.Other": b"1"}


def test_without_kv_it_still_logs_and_shows_no_count():
    host = testing.Host(kv=False)
    assert host.run(handle, testing.event("A", None, id="a")) == Success()
    assert host.messages() == ["audit: A a from /gridfn/tests subject=- attempt=0 bytes=4 seen=-"]


def test_a_failing_store_is_retried_and_nothing_is_logged():
    host = testing.Host(kv=True, kv_failure="redis is down")
    assert host.run(handle, testing.event("A", 1)) == Retry("counting failed: redis is down")
    assert host.logs == []
