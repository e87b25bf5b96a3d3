"""benchmarks/device_trace.py sums device kernel durations of a Perfetto trace by kernel and category
(host events do not count), and reports shares of the summed time."""

import gzip
import json

import pytest

from benchmarks import device_trace


def write_trace(directory, events):
    run = directory / "plugins" / "profile" / "2026_12_03_12_00_00"
    run.mkdir(parents=True)
    meta = [
        {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/host:CPU"}},
        {"ph": "M", "name": "process_name", "pid": 7, "args": {"name": "/device:GPU:0"}},
    ]
    with gzip.open(run / "perfetto_trace.json.gz", "wt") as fh:
        json.dump({"traceEvents": meta + events}, fh)


def kernel(name, dur, pid=7):
    return {"ph": "X", "name": name, "pid": pid, "tid": 3, "ts": 0.0, "dur": dur}


def test_sums_device_kernels_by_name_and_category(tmp_path):
    write_trace(
        tmp_path,
        [
            kernel("parallel_fw_kernel", 300.0),
            kernel("parallel_fw_kernel", 100.0),
            kernel("nvjet_hsh_128x256_64x4_2x1_v_bz_coopB_TNN", 250.0),
            kernel("loop_transpose_fusion_3", 150.0),
            kernel("loop_multiply_fusion", 200.0),
            kernel("PjitFunction(step)", 5000.0, pid=1),  # host: not a kernel
        ],
    )
    times = device_trace.kernel_times(tmp_path)
    assert set(times) == {
        "parallel_fw_kernel",
        "nvjet_hsh_128x256_64x4_2x1_v_bz_coopB_TNN",
        "loop_transpose_fusion_3",
        "loop_multiply_fusion",
    }
    assert times["parallel_fw_kernel"].count == 2 and times["parallel_fw_kernel"].total_us == 400.0
    assert [device_trace.category(n) for n in times] == [
        "mLSTM Triton kernels",
        "matmuls (cuBLAS, XLA gemm fusions)",
        "transposes and copies",
        "other fusions",
    ]
    lines = device_trace.breakdown_tables(times, steps=2, step_ms=1.0)
    assert lines[0].startswith("summed device kernel time 0.500 ms per step against a 1.000 ms step (50.0%)")
    # category rows by time: mLSTM 0.2 ms (40%), matmuls 0.125 (25%), other fusions 0.1, transposes 0.075
    assert "| mLSTM Triton kernels | 1.000 | 0.200 | 40.000 |" in lines[2]
    assert lines[2].index("other fusions") < lines[2].index("transposes and copies")


def test_missing_trace_names_the_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        device_trace.kernel_times(tmp_path)


def test_cpu_trace_has_no_device_kernels():
    assert device_trace.breakdown_tables({}, steps=1, step_ms=1.0) == [
        "no device kernels in the trace (a CPU run has none)"
    ]
