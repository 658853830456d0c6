"""Where the glacompiler this test process imported lives, for child processes that must import the same one:
the source tree under the editable install, the installed wheel where the suite runs against one (as on the GPU
machine, with python -P)."""
from pathlib import Path

import glacompiler

PACKAGE_PARENT = Path(glacompiler.__file__).resolve().parent.parent
