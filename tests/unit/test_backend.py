"""OnnxBackend: which ONNX Runtime provider runs the model, and never a silent fallback."""

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from dipr.models.registry import DEFAULT_ONNX
from dipr.service.backend import (
    CPU,
    OnnxBackend,
    ProviderUnavailable,
    ResidentBatch,
    TensorrtOptions,
    allocation_problem,
    cuda_graph_providers,
    fixed_batch_session,
    pinned_memory,
    pinned_memory_crash,
    session_options,
    warm_up_sizes,
)
from dipr.service.settings import Settings

NO_GPU = "CUDAExecutionProvider" not in ort.get_available_providers()


def test_cpu_runs_a_batch_with_every_output() -> None:
    backend = OnnxBackend(DEFAULT_ONNX, "cpu")
    assert backend.provider == CPU
    outputs = backend.infer(np.zeros((3, 256, 256, 3), np.uint8))
    assert outputs["keypoints"].shape == (3, 17, 2)
    assert outputs["scores"].shape == (3, 17)


def test_alongside_session_gives_the_same_results_on_fewer_threads() -> None:
    backend = OnnxBackend(DEFAULT_ONNX, "cpu", intra_op_threads=2)
    batch = np.random.default_rng(0).integers(0, 256, (2, 256, 256, 3), dtype=np.uint8)
    alone = backend.infer_alongside(batch)  # no alongside session yet: the main one
    backend.add_alongside_session(threads=1)
    alongside = backend.infer_alongside(batch)
    main = backend.infer(batch)
    for name, values in main.items():
        np.testing.assert_allclose(alongside[name], values, atol=1e-4)
        np.testing.assert_array_equal(alone[name], values)


@pytest.mark.skipif(not NO_GPU, reason="this onnxruntime has CUDA")
@pytest.mark.parametrize(("provider", "named"), [("cuda", "CUDA"), ("tensorrt", "TensorRT")])
def test_a_gpu_provider_that_is_missing_is_refused(provider: str, named: str, tmp_path) -> None:
    options = TensorrtOptions(tmp_path / "trt", 8)
    with pytest.raises(ProviderUnavailable, match=f"{named} was requested"):
        OnnxBackend(DEFAULT_ONNX, provider, tensorrt=options)


@pytest.mark.skipif(not NO_GPU, reason="this onnxruntime has CUDA")
def test_auto_without_a_gpu_is_cpu() -> None:
    assert OnnxBackend(DEFAULT_ONNX, "auto").provider == CPU


def test_tensorrt_profile_covers_every_batch_the_batcher_forms(tmp_path: Path) -> None:
    options = TensorrtOptions(tmp_path, max_batch_size=16)
    provider_options = options.provider_options("image", (192, 256), device_id=1)
    assert provider_options["trt_profile_min_shapes"] == "image:1x256x192x3"  # NHWC, uint8
    assert provider_options["trt_profile_opt_shapes"] == "image:16x256x192x3"
    assert provider_options["trt_profile_max_shapes"] == "image:16x256x192x3"
    assert provider_options["trt_engine_cache_enable"] is True
    assert provider_options["device_id"] == 1
    assert "trt_fp16_enable" not in provider_options  # precision is the model's: head in fp32
    # Another batch range builds (and caches) its own engine instead of reusing this one.
    other = TensorrtOptions(tmp_path, max_batch_size=32).provider_options("image", (192, 256), 0)
    assert other["trt_engine_cache_path"] != provider_options["trt_engine_cache_path"]
    assert other["trt_timing_cache_path"] == provider_options["trt_timing_cache_path"]


@pytest.mark.parametrize(
    ("largest", "sizes"),
    [(1, [1]), (8, [1, 2, 4, 8]), (12, [1, 2, 4, 8, 12]), (16, [1, 2, 4, 8, 16])],
)
def test_warm_up_runs_powers_of_two_and_the_largest_batch(largest, sizes):
    assert warm_up_sizes(largest) == sizes


@pytest.mark.skipif(not NO_GPU, reason="this onnxruntime has CUDA")
def test_auto_serves_on_cpu_when_onnxruntime_offers_cuda_that_does_not_work(monkeypatch) -> None:
    """onnxruntime-gpu on a machine without a GPU: CUDA is listed, the session runs on CPU.
    `auto` means "else CPU" (with a warning); `cuda` asked by name is still refused."""
    offered = ["CUDAExecutionProvider", CPU]
    monkeypatch.setattr(ort, "get_available_providers", lambda: offered)
    backend = OnnxBackend(DEFAULT_ONNX, "auto")
    assert backend.provider == CPU
    assert backend.infer(np.zeros((1, 256, 256, 3), np.uint8))["scores"].shape == (1, 17)
    with pytest.raises(ProviderUnavailable, match="CUDA was requested"):
        OnnxBackend(DEFAULT_ONNX, "cuda")


def test_on_a_gpu_onnx_runtime_gets_one_thread_that_does_not_spin() -> None:
    gpu = session_options(0, gpu=True)
    assert gpu.intra_op_num_threads == 1
    assert gpu.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    cpu = session_options(0)
    assert cpu.intra_op_num_threads == 0  # ONNX Runtime's choice: a thread per core
    assert session_options(3, gpu=True).intra_op_num_threads == 3  # asked for: as asked


def record_session_runs(monkeypatch: pytest.MonkeyPatch, backend: OnnxBackend) -> list[int]:
    """The row counts of the batches `backend` runs with plain `session.run` from now on."""
    rows_run: list[int] = []
    run = backend._run

    def recording(session: ort.InferenceSession, rows: np.ndarray) -> dict[str, np.ndarray]:
        rows_run.append(len(rows))
        return run(session, rows)

    monkeypatch.setattr(backend, "_run", recording)
    return rows_run


def test_a_batch_is_padded_to_a_warmed_size_and_answered_with_its_own_rows(monkeypatch) -> None:
    backend = OnnxBackend(DEFAULT_ONNX, "cpu")
    batch = np.random.default_rng(1).integers(0, 256, (3, 256, 256, 3), dtype=np.uint8)
    unpadded = backend.infer(batch)
    shapes = record_session_runs(monkeypatch, backend)
    backend.batch_buckets = tuple(warm_up_sizes(16))  # what warm-up sets on a GPU
    padded = backend.infer(batch)
    assert shapes == [4]  # the model ran a warmed shape
    for name, values in unpadded.items():
        assert padded[name].shape == values.shape
        np.testing.assert_allclose(padded[name], values, atol=1e-4)
    backend.infer(batch[:1])
    backend.infer(np.concatenate([batch] * 4))  # 12 → 16
    assert shapes == [4, 1, 16]


def test_warm_up_sets_buckets_only_where_shapes_are_tuned() -> None:
    backend = OnnxBackend(DEFAULT_ONNX, "cpu")
    backend.warm_up([1, 2])
    assert backend.batch_buckets == ()  # CPU: each padded row would cost as much as a real one


# --- inputs and outputs resident on the device (IOBinding), CUDA graphs -------------------------


def random_crops(rows: int, seed: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (rows, 256, 256, 3), dtype=np.uint8)


def test_resident_batch_gives_exactly_what_session_run_gives() -> None:
    """The binding path with "cpu" OrtValues: the same code that binds "cuda" ones on a GPU."""
    session = OnnxBackend(DEFAULT_ONNX, "cpu").session
    resident = ResidentBatch(session, 4, "cpu")
    first, second = random_crops(4, seed=3), random_crops(4, seed=4)
    names = [output.name for output in session.get_outputs()]
    expected = [
        dict(zip(names, session.run(None, {"image": x}), strict=True)) for x in (first, second)
    ]
    got_first = resident.run(first)
    got_second = resident.run(second)  # the same bound memory, overwritten
    assert got_first is not None and got_second is not None
    for got, want in ((got_first, expected[0]), (got_second, expected[1])):
        assert got.keys() == want.keys()
        for name, values in want.items():
            np.testing.assert_array_equal(got[name], values)  # copies, not views of the buffers


def test_resident_batch_runs_one_batch_at_a_time() -> None:
    resident = ResidentBatch(OnnxBackend(DEFAULT_ONNX, "cpu").session, 1, "cpu")
    with resident._busy:  # another worker's batch is running on these buffers
        assert resident.run(random_crops(1)) is None
    assert resident.run(random_crops(1)) is not None


def test_warmed_sizes_run_on_resident_buffers_and_others_on_session_run(monkeypatch) -> None:
    backend = OnnxBackend(DEFAULT_ONNX, "cpu")
    batch = random_crops(3)
    plain = backend.infer(batch)
    backend.io_device = "cpu"  # what a GPU provider sets ("cuda"): the same code path
    backend.warm_up([1, 2, 4])
    assert backend.batch_buckets == (1, 2, 4)
    runs = record_session_runs(monkeypatch, backend)
    padded = backend.infer(batch)  # 3 rows → the resident buffers of 4
    assert runs == []
    for name, values in plain.items():
        assert padded[name].shape == values.shape
        np.testing.assert_allclose(padded[name], values, atol=1e-4)
    backend.infer(random_crops(5))  # larger than any warmed size: session.run
    assert runs == [5]
    with backend._resident[4]._busy:  # buffers busy: session.run rather than wait
        busy = backend.infer(batch)
    assert runs == [5, 4]
    for name, values in padded.items():
        np.testing.assert_array_equal(busy[name], values)


def test_resident_batch_pads_a_short_batch_itself() -> None:
    session = OnnxBackend(DEFAULT_ONNX, "cpu").session
    resident = ResidentBatch(session, 4, "cpu")
    batch = random_crops(3)
    got = resident.run(batch)
    assert got is not None
    want = session.run(None, {"image": np.concatenate([batch, np.zeros_like(batch[:1])])})
    for values, expected in zip(got.values(), want, strict=True):
        np.testing.assert_array_equal(values, expected[:3])
    with pytest.raises(ValueError, match="a batch of 5 rows for buffers of 4"):
        resident.run(random_crops(5))


@pytest.fixture(scope="module")
def host_memory() -> ort.OrtMemoryInfo:
    """Host memory from a shared allocator registered with ONNX Runtime's environment: how the
    CUDA provider's page-locked memory is allocated, on the CPU (which has no page-locked kind)."""
    memory = ort.OrtMemoryInfo(
        "Cpu", ort.OrtAllocatorType.ORT_DEVICE_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
    )
    ort.create_and_register_allocator(memory, None)
    return memory


def test_staged_batches_give_exactly_what_session_run_gives(host_memory) -> None:
    session = OnnxBackend(DEFAULT_ONNX, "cpu").session
    resident = ResidentBatch(session, 4, "cpu", staging=host_memory)
    assert resident.staging is not None
    # A view of ONNX Runtime's allocation, not a copy of it.
    assert resident.staging.ctypes.data == resident._staging_owner.data_ptr()
    # 4 rows, then 2 (the last two rows of the 4 must not be run again), then 3.
    for rows, seed in ((4, 5), (2, 6), (3, 7)):
        batch = random_crops(rows, seed)
        padded = np.concatenate([batch, np.zeros((4 - rows, *batch.shape[1:]), np.uint8)])
        want = session.run(None, {"image": padded})
        got = resident.run(batch)
        assert got is not None
        for values, expected in zip(got.values(), want, strict=True):
            np.testing.assert_array_equal(values, expected[:rows])
        np.testing.assert_array_equal(resident.staging, padded)


def test_memory_without_an_allocator_is_found_out_before_warm_up(host_memory) -> None:
    assert allocation_problem(host_memory) == ""
    # No allocator registered for this memory type (the fixture's is DEFAULT).
    unregistered = ort.OrtMemoryInfo(
        "Cpu", ort.OrtAllocatorType.ORT_DEVICE_ALLOCATOR, 0, ort.OrtMemType.CPU_OUTPUT
    )
    assert allocation_problem(unregistered).startswith(
        "onnxruntime cannot allocate its Cpu memory: No shared allocator found"
    )


@pytest.mark.skipif(not NO_GPU, reason="onnxruntime-gpu has the CUDA provider library")
def test_without_the_cuda_provider_there_is_no_pinned_memory(caplog) -> None:
    assert pinned_memory(0) == (None, "this onnxruntime has no CUDA provider library")
    backend = OnnxBackend(DEFAULT_ONNX, "cpu")
    with caplog.at_level("WARNING", logger="dipr.service.backend"):
        assert backend._staging_memory("cuda") is None
    assert (
        not backend.pinned
        and backend.pinned_note == "this onnxruntime has no CUDA provider library"
    )
    assert "batches are copied to the GPU from pageable memory" in caplog.text
    assert OnnxBackend(DEFAULT_ONNX, "cpu", pinned_buffers=False)._staging_memory("cuda") is None


def test_page_locked_memory_is_looked_for_in_a_process_of_its_own_first() -> None:
    """On a GPU the probe decides whether a replica may look in-process; here it finds no CUDA
    provider library and returns normally, which is no crash."""
    assert pinned_memory_crash(0) == ""


def test_pinned_buffers_are_on_unless_set_off(monkeypatch) -> None:
    assert Settings().pinned_buffers is True
    monkeypatch.setenv("DIPR_PINNED_BUFFERS", "false")
    assert Settings().pinned_buffers is False


def test_a_fixed_batch_session_has_static_shapes_and_the_same_outputs() -> None:
    session = fixed_batch_session(DEFAULT_ONNX, 2, [CPU], session_options(0))
    assert session.get_inputs()[0].shape == [2, 256, 256, 3]
    assert session.get_outputs()[0].shape == [2, 17, 2]
    batch = random_crops(2)
    fixed = session.run(None, {"image": batch})
    dynamic = OnnxBackend(DEFAULT_ONNX, "cpu").session.run(None, {"image": batch})
    for got, want in zip(fixed, dynamic, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_cuda_graphs_are_asked_of_the_cuda_provider_only(caplog) -> None:
    assert cuda_graph_providers(1) == [
        ("CUDAExecutionProvider", {"device_id": 1, "enable_cuda_graph": "1"}),
        CPU,
    ]
    with caplog.at_level("WARNING", logger="dipr.service.backend"):
        backend = OnnxBackend(DEFAULT_ONNX, "cpu", cuda_graphs=True)
    assert not backend.cuda_graphs and backend.io_device is None
    assert "CUDA graphs are for the CUDA provider" in caplog.text


def test_cuda_graphs_are_off_unless_set(monkeypatch) -> None:
    assert Settings().cuda_graphs is False
    monkeypatch.setenv("DIPR_CUDA_GRAPHS", "true")
    assert Settings().cuda_graphs is True


@pytest.mark.skipif(NO_GPU, reason="needs onnxruntime-gpu and a GPU")
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_on_cuda_warmed_sizes_keep_their_buffers_on_the_gpu(cuda_graphs: bool) -> None:
    from dipr.benchmarks.limit import model_input

    photos = sorted((Path(__file__).parents[1] / "fixtures" / "photos").glob("*.jpg"))
    crops = np.stack([model_input(photo.read_bytes(), (256, 256)) for photo in photos])
    backend = OnnxBackend(DEFAULT_ONNX, "cuda", cuda_graphs=cuda_graphs)
    assert backend.io_device == "cuda" and backend.cuda_graphs == cuda_graphs
    backend.warm_up([1, 2, 4])
    assert sorted(backend._resident) == [1, 2, 4]
    assert backend._resident[4].input.device_name().lower() == "cuda"
    # Page-locked staging from the CUDA provider (or why not: then `make gpu-check` says so too).
    assert backend.pinned, backend.pinned_note
    on_cpu = OnnxBackend(DEFAULT_ONNX, "cpu")
    # Twice, in two orders: a CUDA graph replays with each new input copied into its memory.
    for batch in (crops, crops[::-1].copy()):
        on_gpu = backend.infer(batch)  # 3 rows: padded to the resident 4
        expected = on_cpu.infer(batch)
        np.testing.assert_allclose(on_gpu["keypoints"], expected["keypoints"], atol=0.05)
