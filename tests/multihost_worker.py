"""One process of the multi-host fine-tuning test (tests/test_tune.py).

``python multihost_worker.py OUT --processes P --process-id I --port N``
fine-tunes a small photonic ResNet data-parallel over a 4-device mesh, as
process ``I`` of ``P`` (``P = 1``: one process on 4 forced host devices;
``P = 2``: two processes with 2 devices each, joined by
``jax.distributed.initialize`` on 127.0.0.1:N), each process feeding its own
share of the global batch; process 0 writes the parameters before and
after tuning to ``OUT`` (``.npz``, keys ``"initial …"`` and ``"tuned …"``).
"""

from __future__ import annotations

import argparse
import os

DEVICES = 4
STEPS = 3
BATCH = 8  # examples per step and process with two processes


def data(process: int, processes: int):
    """The examples of ``process``: with two, each holds one half of the
    global batch; alone, the whole of it (the two halves in process order)."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.random((2 * BATCH, 1, 8, 8), np.float32)
    y = rng.integers(0, 10, 2 * BATCH)
    if processes == 1:
        return x, y
    part = slice(process * BATCH, (process + 1) * BATCH)
    return x[part], y[part]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--processes", type=int, choices=(1, 2), required=True)
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={DEVICES // args.processes}"

    import jax

    if args.processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(f"127.0.0.1:{args.port}", num_processes=args.processes, process_id=args.process_id)
    import numpy as np
    import optax
    from flax import nnx

    from lumijax import convert, tune

    assert jax.device_count() == DEVICES, jax.devices()
    model = convert.recipe("resnet", layers=(1, 1, 1, 1), width=8, num_classes=10, in_channels=1, stem_kernel=3,
                           stem_stride=1, stem_pool=False, weight_bits=6, seed=3)
    mesh = jax.make_mesh((DEVICES,), ("data",))
    # Whole batches, so that every step sees the same examples in both
    # layouts (their order within a batch does not change the mean loss).
    local = data(args.process_id, args.processes)

    def params(prefix: str) -> dict:
        return {f"{prefix}{path}": np.asarray(jax.device_get(value.get_value()))
                for path, value in nnx.to_flat_state(nnx.state(model, nnx.Param))}

    initial = params("initial ")
    tune.finetune(model, local, optimizer=optax.sgd(0.05), steps=STEPS, batch_size=len(local[0]), mesh=mesh,
                  mode="expected", progress=False)
    if args.process_id == 0:
        np.savez(args.out, **initial, **params("tuned "))
    if args.processes > 1:
        jax.distributed.shutdown()


if __name__ == "__main__":
    main()
