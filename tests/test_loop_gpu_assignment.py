"""Loop training workers on a machine with several GPUs: worker k on GPU k mod n."""

from __future__ import annotations

from ovcamo.engine.loop import worker_gpu_env


def test_worker_k_gets_gpu_k_mod_n():
    assert [worker_gpu_env(k, 2)["CUDA_VISIBLE_DEVICES"] for k in range(5)] == list("01010")
    assert [worker_gpu_env(k, 3)["CUDA_VISIBLE_DEVICES"] for k in range(4)] == list("0120")


def test_the_loops_own_visible_devices_are_the_ones_shared_out():
    got = [worker_gpu_env(k, 2, "3, 5")["CUDA_VISIBLE_DEVICES"] for k in range(3)]
    assert got == ["3", "5", "3"]


def test_no_gpu_leaves_the_environment_alone():
    assert worker_gpu_env(0, 0) == {} and worker_gpu_env(3, 0, "1") == {}
    assert worker_gpu_env(1, 1) == {"CUDA_VISIBLE_DEVICES": "0"}
