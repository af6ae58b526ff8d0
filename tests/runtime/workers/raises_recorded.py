"""A worker whose main, decorated with torch's @record, raises on rank 1: the error lands in TORCHELASTIC_ERROR_FILE."""

import os

from torch.distributed.elastic.multiprocessing.errors import record


@record
def main() -> None:
    if os.environ["RANK"] == "1":
        raise ValueError("bad batch shape on rank 1")


if __name__ == "__main__":
    main()
