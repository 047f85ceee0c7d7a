"""The latency recorder: counts add up, errors by type, percentiles in ms, per-second series."""

import pytest

from bkv_bench import histogram
from bkv_bench.histogram import Recorder

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


def test_counts_errors_and_percentiles() -> None:
    r = Recorder(start=100.0)
    for i in range(1, 101):
        r.record("recover", 100.0 + i / 100, i / 1000)  # 1 .. 100 ms
    r.record("recover", 100.5, None, error="Unavailable")
    r.record("delete", 101.5, 0.004)
    r.record("delete", 101.6, None, error="RateLimited")
    r.record("delete", 101.7, None, error="RateLimited")
    rec = r.summary("recover", elapsed_s=2.0)
    assert (rec.count, rec.ok, rec.errors) == (101, 100, {"Unavailable": 1})
    assert rec.throughput_per_s == pytest.approx(50.5)
    assert rec.latency_ms["p50"] == pytest.approx(50.0, rel=0.01)
    assert rec.latency_ms["p99"] == pytest.approx(99.0, rel=0.01)
    assert rec.latency_ms["max"] == pytest.approx(100.0, rel=0.01)
    total = r.combined(elapsed_s=2.0)
    assert total.count == r.total == 104
    assert total.errors == {"RateLimited": 2, "Unavailable": 1}
    assert r.total_errors == 3
    assert sum(r.summary(op, 2.0).count for op in r.ops()) == total.count


def test_empty_operation_has_no_latency() -> None:
    s = Recorder(start=0.0).summary("wrong", elapsed_s=1.0)
    assert s.count == 0
    assert s.latency_ms["p99"] is None


def test_success_needs_a_latency() -> None:
    with pytest.raises(ValueError):
        Recorder(start=0.0).record("recover", 1.0, None)


def test_series_has_one_point_per_second_including_gaps() -> None:
    r = Recorder(start=0.0)
    r.record("recover", 0.2, 0.010)
    r.record("recover", 0.4, 0.030)
    r.record("recover", 2.1, None, error="Unavailable")
    series = r.series(elapsed_s=2.5)
    assert [p["t_s"] for p in series] == [0.0, 1.0, 2.0]
    assert series[0]["throughput_per_s"] == 2.0
    assert series[1]["throughput_per_s"] == 0.0 and series[1]["p50_ms"] is None
    assert series[2]["errors"] == 1
    assert series[2]["throughput_per_s"] == pytest.approx(2.0)  # 1 op in the last 0.5 s


def test_a_record_builds_no_histogram_it_does_not_keep(monkeypatch: pytest.MonkeyPatch) -> None:
    """One histogram per operation and one per second, built once: a histogram is tens of KB,
    and building one per record cost the load generator about 60 µs per operation, counted in
    bench.json's CPU per operation."""
    built: list[object] = []
    real = histogram.HdrHistogram

    def counting(*args: object) -> object:
        built.append(args)
        return real(*args)

    monkeypatch.setattr(histogram, "HdrHistogram", counting)
    r = Recorder(start=0.0)
    for i in range(100):
        r.record("recover", 0.5 + i / 1000, 0.02)  # all in the first second
    r.record("recover", 1.5, None, error="Unavailable")  # an error builds its bucket only
    assert len(built) == 3  # "recover", second 0, second 1
    assert r.summary("recover", 2.0).count == 101
