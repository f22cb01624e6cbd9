"""Run the CLI under FSDP on CPU processes (gloo), for the tests.

accelerate turns FSDP on only for GPUs: with `cpu=True` it falls back to plain data
parallel. This lifts that one check; everything else is the real thing — accelerate's
FSDP2 preparation (`fully_shard` per decoder layer, weights loaded by rank 0 and
broadcast), sharded parameters, gradient reduce-scatter, clipping and our checkpoints.

    accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes 2 \
        tests/fsdp_on_cpu.py train --set ...
"""

import sys

import accelerate.state
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

accelerator_state_init = accelerate.state.AcceleratorState.__init__


def init_with_fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    accelerator_state_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if self.distributed_type == DistributedType.MULTI_CPU and isinstance(fsdp_plugin, FullyShardedDataParallelPlugin):
        # AcceleratorState copies PartialState's fields on every instantiation: set both.
        accelerate.state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin


accelerate.state.AcceleratorState.__init__ = init_with_fsdp_on_cpu

if __name__ == "__main__":
    import os

    from {{ cookiecutter.package_name }}.cli import main
    from {{ cookiecutter.package_name }}.model import loss

    # Chunks small enough that the tiny model's loss runs in several (tests/test_memory.py).
    loss.CHUNK_LOGITS_BYTES = int(os.environ.get("TEST_LOSS_CHUNK_BYTES", loss.CHUNK_LOGITS_BYTES))

    sys.exit(main(sys.argv[1:]))
