"""The host and guest memory model."""

from __future__ import annotations

import numpy as np

from autoballoon_core.model import GiB, MiB, PressureLevel
from autoballoon_sim.model import HostModel, ModelParams


def model(n: int = 2, total: float = 8 * GiB, cache_rate: float = 0.0,
          **params: object) -> HostModel:
    return HostModel(np.full(n, 4.0 * GiB), total, np.full(n, cache_rate),
                     np.full(n, 2.0 * GiB), ModelParams(**params))  # type: ignore[arg-type]


def test_caches_grow_until_free_memory_runs_out() -> None:
    m = model(cache_rate=100 * MiB)
    for t in range(1, 100):
        m.step(float(t), 1.0, np.full(2, 0.25))
    assert np.allclose(m.cache, 2 * GiB)  # the cache ceiling
    assert m.used > 2 * (GiB + 2 * GiB)


def test_balloon_moves_at_its_rates_and_not_into_used_memory() -> None:
    m = model()
    m.target[:] = 2 * GiB
    m.step(1.0, 1.0, np.full(2, 0.25))
    assert np.allclose(m.actual, 4 * GiB - 600 * MiB)
    m.target[:] = 4 * GiB
    m.step(2.0, 1.0, np.full(2, 0.25))
    assert np.allclose(m.actual, 4 * GiB)
    m.target[:] = 0
    for t in range(3, 20):
        m.step(float(t), 1.0, np.full(2, 0.25))
    assert np.all(m.actual >= m.kernel + m.demand)


def test_guest_pressure_and_deflate_on_oom() -> None:
    m = model()
    m.target[:] = 1.3 * GiB
    for t in range(1, 10):
        m.step(float(t), 1.0, np.full(2, 0.25))
    pressured, wanted = m.pressure()
    assert pressured.all() and (wanted > 0).all()
    m.step(10.0, 1.0, np.full(2, 0.5))  # demand beyond the ballooned size
    assert m.metrics.guest_oom_deflates == 2
    assert np.all(m.actual >= m.kernel + m.demand)
    assert sorted(m.oom_deflated.tolist()) == [0, 1]


def test_without_deflate_on_oom_the_guest_kills_a_process() -> None:
    m = model(deflate_on_oom=False)
    m.target[:] = 1.3 * GiB
    for t in range(1, 10):
        m.step(float(t), 1.0, np.full(2, 0.25))
    m.step(10.0, 1.0, np.full(2, 0.5))
    assert m.metrics.guest_oom_kills == 2 and m.metrics.guest_oom_deflates == 0
    assert np.all(m.actual < 1.4 * GiB)


def test_host_over_its_limit_kills_the_largest_guest_which_restarts() -> None:
    m = model(n=3, total=5 * GiB, restart_delay=30.0)
    share = np.array([0.3, 0.6, 0.3])
    m.step(1.0, 1.0, share)
    assert m.metrics.host_oom_kills == 1 and not m.alive[1]
    assert m.used <= m.total
    for t in range(2, 40):
        m.step(float(t), 1.0, np.array([0.3, 0.1, 0.3]))
    assert m.alive.all() and m.metrics.guest_down_s >= 29


def test_stall_time_and_levels_follow_host_usage() -> None:
    m = model(n=2, total=4.1 * GiB)
    m.step(1.0, 1.0, np.full(2, 0.45))
    assert m.used / m.total > 0.97
    assert m.level is PressureLevel.MEDIUM or m.level is PressureLevel.CRITICAL
    assert m.metrics.host_stall_s == 1.0
    calm = model(n=2, total=16 * GiB)
    calm.step(1.0, 1.0, np.full(2, 0.2))
    assert calm.level is PressureLevel.NONE and calm.metrics.host_stall_s == 0.0


def test_deflate_on_oom_gives_back_at_its_rate_and_the_workload_waits() -> None:
    m = model(oom_deflate_rate=100 * MiB)
    m.target[:] = 1.3 * GiB
    for t in range(1, 10):
        m.step(float(t), 1.0, np.full(2, 0.25))
    before = m.actual.copy()
    m.step(10.0, 1.0, np.full(2, 0.5))  # wants 2 GiB of demand at once
    assert np.allclose(m.actual - before, 100 * MiB)
    assert np.all(m.demand < 0.5 * m.max)  # the allocation waits for the balloon
    assert np.all(m.kernel + m.demand <= m.actual)


def test_a_host_process_over_the_limit_is_killed_before_any_guest() -> None:
    m = model(total=3 * GiB)
    m.claim = 2 * GiB
    m.step(1.0, 1.0, np.full(2, 0.3))
    assert m.metrics.claim_killed == 1 and m.claim == 0.0
    assert m.alive.all() and m.metrics.host_oom_kills == 0


def test_free_page_reporting_leaves_a_residue_of_freed_memory() -> None:
    import numpy as np

    from autoballoon_sim.model import HostModel, ModelParams

    mib = float(1 << 20)
    params = ModelParams(kernel_min=64 * mib, kernel_percent=0.0, host_base_percent=0.0,
                         fpr_residue=50 * mib)
    model = HostModel(np.array([1024 * mib]), 4096 * mib, np.zeros(1), np.zeros(1), params)
    model.step(1.0, 0.1, np.array([0.5]))  # 512 MiB touched
    assert model.resident[0] == 64 * mib + 512 * mib
    model.step(1.1, 0.1, np.array([0.0]))  # freed: all but the residue goes back
    assert model.resident[0] == 64 * mib + 50 * mib


def test_a_fast_grower_dies_with_the_cgroups_victim() -> None:
    import numpy as np

    from autoballoon_sim.model import HostModel, ModelParams

    mib = float(1 << 20)
    for rate, dead in ((24 * mib, [0, 2]), (float("inf"), [0])):
        params = ModelParams(kernel_min=64 * mib, kernel_percent=0.0, host_base_percent=0.0,
                             deflate_on_oom=False, second_kill_rate=rate)
        model = HostModel(np.array([1024 * mib] * 3), 1600 * mib, np.zeros(3), np.zeros(3),
                          params)
        model.step(0.1, 0.1, np.array([0.9, 0.0, 0.40]))
        assert model.killed == []
        # over the limit: the largest (1) dies; 3, growing ~2 GiB/s, dies with it
        model.step(0.2, 0.1, np.array([0.9, 0.0, 0.60]))
        assert sorted(model.killed) == dead


def test_second_kills_are_bounded_largest_first() -> None:
    import numpy as np

    from autoballoon_sim.model import HostModel, ModelParams

    mib = float(1 << 20)
    params = ModelParams(kernel_min=64 * mib, kernel_percent=0.0, host_base_percent=0.0,
                         deflate_on_oom=False, second_kill_rate=24 * mib, second_kills=1)
    model = HostModel(np.array([1024 * mib] * 4), 2300 * mib, np.zeros(4), np.zeros(4),
                      params)
    model.step(0.1, 0.1, np.array([0.9, 0.3, 0.40, 0.30]))
    assert model.killed == []
    # over the limit: the largest (0) dies, and of the two growing, only the larger (2)
    model.step(0.2, 0.1, np.array([0.9, 0.3, 0.60, 0.50]))
    assert sorted(model.killed) == [0, 2]


def test_deflate_on_oom_is_not_undone_by_the_old_target() -> None:
    import numpy as np

    from autoballoon_sim.model import HostModel, ModelParams

    mib = float(1 << 20)
    params = ModelParams(kernel_min=64 * mib, kernel_percent=0.0, host_base_percent=0.0,
                         oom_deflate_rate=1000 * mib)
    model = HostModel(np.array([1024 * mib]), 4096 * mib, np.zeros(1), np.zeros(1), params)
    model.target[:] = 256 * mib
    for k in range(1, 21):
        model.step(k * 0.1, 0.1, np.array([0.0]))
    assert model.actual[0] == 256 * mib
    model.step(2.1, 0.1, np.array([0.3]))  # needs 64 + 307 MiB: the guest deflates itself
    grown = model.actual[0]
    assert grown > 256 * mib
    for k in range(22, 40):
        model.step(k * 0.1, 0.1, np.array([0.0]))  # demand gone: nothing inflates it back
    assert model.actual[0] == grown



def _capped_guest(cap_mib: float, **params: object) -> HostModel:
    """One 1 GiB guest (64 MiB kernel, 50 MiB FPR residue) whose balloon sits at ``cap_mib``."""
    m = HostModel(np.array([1.0 * GiB]), 4.0 * GiB, np.zeros(1), np.zeros(1),
                  ModelParams(kernel_min=64 * MiB, kernel_percent=0.0, host_base_percent=0.0,
                              fpr_residue=50 * MiB, oom_deflate_rate=1000 * MiB,
                              **params))  # type: ignore[arg-type]
    m.target[:] = cap_mib * MiB
    for k in range(1, 21):
        m.step(k * 0.1, 0.1, np.zeros(1))
    assert m.actual[0] == cap_mib * MiB
    return m


def test_the_fpr_residue_stays_resident_while_the_cache_refills() -> None:
    m = _capped_guest(1024)
    m.step(2.1, 0.1, np.array([0.5]))  # 512 MiB touched
    m.step(2.2, 0.1, np.array([0.0]))  # freed: all but the residue goes back
    assert m.resident[0] == (64 + 50) * MiB
    m.cache_rate[:] = 2000 * MiB
    m.cache_max[:] = 192 * MiB
    m.step(2.3, 0.1, np.zeros(1))  # the guest reads 192 MiB into its cache
    assert m.cache[0] == 192 * MiB
    # lab, ramp32 static: refilling the cache did not use the unreported memory up
    assert m.resident[0] == (64 + 192 + 50) * MiB


def test_memory_deflate_on_oom_gave_back_stays_resident_after_it_is_freed() -> None:
    for unreported, kept_mib in ((False, 50), (True, 50 + 100)):
        m = _capped_guest(400, oom_deflate_unreported=unreported)
        # 64 + 420 MiB needed with 16 MiB free: deflate-on-oom gives back 100 MiB
        m.step(2.1, 0.1, np.array([420 / 1024]))
        assert m.actual[0] == 500 * MiB
        assert m.oom_given[0] == 100 * MiB
        m.step(2.2, 0.1, np.zeros(1))  # the demand is freed
        assert m.resident[0] == (64 + kept_mib) * MiB


def test_an_inflating_balloon_takes_back_what_deflate_on_oom_gave() -> None:
    m = _capped_guest(400, oom_deflate_unreported=True)
    m.step(2.1, 0.1, np.array([420 / 1024]))
    m.step(2.2, 0.1, np.zeros(1))
    assert m.oom_given[0] == 100 * MiB
    m.target[:] = 440 * MiB  # a new, lower target: the balloon inflates by 60 MiB
    m.step(2.3, 0.1, np.zeros(1))
    assert m.actual[0] == 440 * MiB
    assert m.oom_given[0] == 40 * MiB
    assert m.resident[0] == (64 + 50 + 40) * MiB
