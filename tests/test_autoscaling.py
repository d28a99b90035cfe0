"""The queue-depth policy, tick by tick: bursts, plateaus, flapping, bounds,
scale to zero and back."""

from dataclasses import replace

from shardserve.api.serve_options import build_autoscaling_config
from shardserve.serve.autoscaling.policy import QueueDepthPolicy, ScalingBounds, ScalingInputs, compute_scaling

BOUNDS = ScalingBounds(min_replicas=1, max_replicas=4, target_queue_depth=4, replica_capacity=16,
                       upscale_delay_s=5, downscale_delay_s=30)


def simulate(ticks, bounds=BOUNDS, replicas=1, start_delay_ticks=0):
    """Feeds (waiting, running) per 1-second tick; returns the target after each.

    Replicas decided on serve `start_delay_ticks` later; removals are immediate.
    """
    target = serving = replicas
    state, targets, ready_at = {}, [], None
    for now, (waiting, running) in enumerate(ticks):
        if ready_at is not None and now >= ready_at:
            serving, ready_at = target, None
        decision = compute_scaling(
            ScalingInputs(now=float(now), running_replicas=serving, target_replicas=target,
                          waiting=waiting, running=running, **state), bounds)
        state = {"high_since": decision.high_since, "low_since": decision.low_since}
        if decision.desired_replicas > target:
            ready_at = now + start_delay_ticks
        target = decision.desired_replicas
        serving = min(serving, target)
        if start_delay_ticks == 0:
            serving = target
        targets.append(target)
    return targets


def test_burst_scales_up_after_the_upscale_delay():
    targets = simulate([(20, 16)] * 8)
    assert targets[:5] == [1] * 5  # delay of 5 s
    assert targets[5] == 4  # ceil(20 / 4) = 5, capped at maxReplicas


def test_short_spike_does_not_scale():
    assert simulate([(20, 16)] * 3 + [(0, 8)] * 5) == [1] * 8


def test_proportional_step():
    assert simulate([(9, 16)] * 6)[-1] == 3  # ceil(9 / 4)


def test_plateau_within_target_holds():
    assert simulate([(4, 16)] * 60) == [1] * 60  # 4 per replica is not above target 4


def test_decision_in_progress_is_not_undone_while_replica_starts():
    targets = simulate([(20, 16)] * 20, start_delay_ticks=10)
    assert targets[5:] == [4] * 15


def test_scale_down_only_after_queue_stays_empty_for_the_delay():
    targets = simulate([(0, 4)] * 40, replicas=3)
    assert targets[:30] == [3] * 30
    assert targets[30] == 1  # 4 running fit one replica of 16


def test_scale_down_keeps_replicas_the_running_load_needs():
    assert simulate([(0, 40)] * 35, replicas=4)[-1] == 3  # 40 running need ceil(40/16) = 3


def test_flapping_load_resets_both_timers():
    flapping = [(20, 16), (0, 2)] * 30
    assert simulate(flapping, replicas=2) == [2] * 60


def test_bounds_are_respected():
    assert max(simulate([(400, 16)] * 20)) == 4
    floor = replace(BOUNDS, min_replicas=2)
    assert min(simulate([(0, 0)] * 100, bounds=floor, replicas=3)) == 2


def test_scale_to_zero_and_back():
    zero = replace(BOUNDS, min_replicas=0)
    idle = simulate([(0, 0)] * 40, bounds=zero, replicas=1)
    assert idle[29] == 1 and idle[30] == 0
    first = compute_scaling(ScalingInputs(now=0, running_replicas=0, target_replicas=0, waiting=1, running=0), zero)
    assert first.desired_replicas == 1 and "scale from zero" in first.reason


def test_no_scale_to_zero_while_requests_run():
    zero = replace(BOUNDS, min_replicas=0)
    assert min(simulate([(0, 1)] * 100, bounds=zero)) == 1


def test_reasons_name_the_inputs():
    decision = compute_scaling(
        ScalingInputs(now=10, running_replicas=1, target_replicas=1, waiting=12, running=16, high_since=0), BOUNDS)
    assert decision.desired_replicas == 3
    assert decision.reason == "scale up 1->3: queue 12.0/replica > target 4 for 10s"
    assert decision.inputs == {"running_replicas": 1, "target_replicas": 1, "waiting": 12, "running": 16}


def test_decision_kind_ignores_the_numbers():
    from shardserve.serve.autoscaling.policy import decision_kind

    assert decision_kind("queue 3.2/replica > target 2 for 1s of 2s") == \
        decision_kind("queue 5.0/replica > target 2 for 0s of 2s")
    assert decision_kind("scale up 1->2: queue") != decision_kind("steady: queue 0.0/replica, 0 running")


class FakeContext:
    def __init__(self, **kw):
        self.app_name, self.deployment_name = "app", "llm"
        self.capacity_adjusted_min_replicas, self.capacity_adjusted_max_replicas = 1, 4
        self.current_num_replicas = self.target_num_replicas = 1
        self.total_queued_requests = 0.0
        self.policy_state = {}
        self.current_time = 100.0
        self.__dict__.update(kw)


def test_serve_policy_reads_replica_metrics_and_handle_queue():
    policy = QueueDepthPolicy(target_queue_depth=4, replica_capacity=16, upscale_delay_s=0, downscale_delay_s=30)
    ctx = FakeContext(aggregated_metrics={"waiting": {"r1": 3.0}, "running": {"r1": 16.0}}, total_queued_requests=6.0)
    desired, state = policy(ctx)
    assert desired == 3  # (3 waiting + 6 queued at handles) / 4
    assert state["reason"].startswith("scale up 1->3")


def test_serve_config_hands_delays_to_the_policy():
    config = build_autoscaling_config(min_replicas=1, max_replicas=2, initial_replicas=1, target_queue_depth=4,
                                      replica_capacity=64, upscale_delay_s=5, downscale_delay_s=300)
    assert config["upscale_delay_s"] == config["downscale_delay_s"] == 0
    assert config["policy"]["policy_kwargs"]["downscale_delay_s"] == 300
    from ray.serve.config import AutoscalingConfig

    parsed = AutoscalingConfig(**config)
    assert parsed.policy.policy_function == "shardserve.autoscaling:QueueDepthPolicy"
