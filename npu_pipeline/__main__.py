"""``python -m npu_pipeline``: the ``npu-pipeline`` command, for when the script is not on PATH."""

import sys

from npu_pipeline.cli import main

sys.exit(main())
