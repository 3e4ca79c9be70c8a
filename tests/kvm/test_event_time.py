"""Events carry the emitter's simulated clock (Event.cycles): what timelines and trace
exports place them by."""

from tests.helpers import run_program


def test_each_vcpus_events_carry_its_clock_in_order():
    vm = run_program("smep_flip_2vcpu", "v5.15", vcpus=2, arg=6, events=True)
    for index in (0, 1):
        times = [e.cycles for e in vm.bus.log if e.vcpu == index]
        assert times == sorted(times)
        assert 0 < times[-1] <= vm.vcpus[index].cpu.cycles


def test_worker_events_carry_the_workers_clock():
    vm = run_program("smep_flip", "v6.1", arg=3, events=True)
    worker = [e for e in vm.bus.log if e.vcpu == -1 and e.name.startswith("kvmdbg:work_")]
    assert worker and all(0 < e.cycles <= vm.worker.clock for e in worker)
    assert [e.cycles for e in worker] == sorted(e.cycles for e in worker)

