import sys
from pathlib import Path

# Allow `python -m pytest training/tests` without `pip install -e training`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
