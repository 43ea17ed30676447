"""One process of the two-process pipeline test (run by test_data_pipeline.py; not a test module itself).

argv: process_id port out_path. Uses the default shard arguments (jax.process_index / process_count), builds each
global batch with jax.make_array_from_process_local_data and records what it saw.
"""

import json
import sys

import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.config.update("jax_num_cpu_devices", 1)
pid, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid)

import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from mojax.data.pipeline import PipelineConfig, make_iterator  # noqa: E402
from mojax.data.readers import TokenizedExample  # noqa: E402
from mojax.data.tokenize import TokenizeConfig  # noqa: E402

rng = np.random.default_rng(0)
records = [TokenizedExample(prompt_ids=[1, 4], response_ids=[[100 + i] * int(rng.integers(1, 40)), [3, 2]],
                            labels=[[1, 0]]) for i in range(45)]
mesh = jax.make_mesh((2,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
sharding = NamedSharding(mesh, PartitionSpec("data"))
cfg = PipelineConfig(batch_size=4, seed=5, num_epochs=1, drop_remainder=False)  # shard args from JAX
seen, shapes = [], []
for batch in make_iterator(records, cfg, tokenize_config=TokenizeConfig(max_length=64, max_prompt_length=8)):
    ids = jax.make_array_from_process_local_data(sharding, batch["input_ids"])
    mask = jax.make_array_from_process_local_data(sharding, batch["example_mask"])
    shapes.append(list(ids.shape))
    first = batch["input_ids"][:, 0, 2]  # the first response token identifies the record
    seen.extend(int(t) - 100 for t in first[batch["example_mask"]])
    # a global reduction over both processes' data: every process must agree on it
    shapes[-1].append(int(jax.jit(lambda m: m.sum())(mask)))
json.dump({"seen": seen, "shapes": shapes, "index": jax.process_index(), "count": jax.process_count()},
          open(out, "w"))
jax.distributed.shutdown()
