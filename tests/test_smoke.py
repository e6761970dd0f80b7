"""The package imports without torch and the API model parses a minimal job."""
import subprocess
import sys

from kubetune_api.spec import load_job
from support.manifests import finetunejob

MINIMAL = finetunejob("minimal", preset="minimal")


def test_minimal_job_gets_defaults():
    job = load_job(MINIMAL)
    assert job.spec.method.type == "lora"
    assert job.spec.distributed.world_size() == 1
    assert job.spec.training.resolved_learning_rate("lora") == 2e-4


def test_spec_module_is_torch_free():
    code = "import sys, kubetune_api.spec, kubetune_api.contract; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
