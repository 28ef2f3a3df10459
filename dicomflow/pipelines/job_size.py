"""What decoding one input of a listed job costs, judged from the first input's header.

The cluster choice (:mod:`.cluster`) estimates a job's work on one core from how many
inputs it has and how many bytes. For pixels, the transfer syntax weighs far more than
the bytes: a compressed file is smaller than an uncompressed one, yet a 512×512 JPEG
2000 lossless slice took 14.4 ms to decode where the uncompressed slice took 0.8 ms.
Judged by bytes alone, 400 such slices looked like a job for this process; decoded on
one thread, they took 7.9 s where the naive loop took 5.8.

The first listed input stands for the job: its header (read on the client, a few
milliseconds) gives the syntax and the number of pixel samples, and the table below
what decoding a sample of that syntax costs beyond an uncompressed one.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from dicomflow.connectors.files import FilesConnector
from dicomflow.operators.flatten import OUTPUT as INSTANCES
from dicomflow.operators.flatten import Flatten
from dicomflow.records import Batch, RunContext, SourceRef

logger = logging.getLogger(__name__)

# Decoding alone, nanoseconds per pixel sample, the median over the corpus's images of at
# least 100,000 samples of each syntax (one thread, 2-core machine, the codecs a worker
# uses). Uncompressed and RLE data decode at about 1 ns a sample, which the cluster's
# per-input constants already hold; every other syntax costs its figure less that.
DECODE_NS_PER_SAMPLE = {
    "1.2.840.10008.1.2.4.50": 12.7,  # JPEG baseline
    "1.2.840.10008.1.2.4.51": 12.1,  # JPEG extended
    "1.2.840.10008.1.2.4.57": 10.0,  # JPEG lossless
    "1.2.840.10008.1.2.4.70": 8.3,  # JPEG lossless, first-order prediction
    "1.2.840.10008.1.2.4.80": 31.1,  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": 29.7,  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90": 86.9,  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": 18.9,  # JPEG 2000
    "1.2.840.10008.1.2.4.201": 11.8,  # HTJ2K lossless
    "1.2.840.10008.1.2.4.202": 11.8,  # HTJ2K lossless RPCL
    "1.2.840.10008.1.2.4.203": 9.8,  # HTJ2K
    "1.2.840.10008.1.2.4.110": 53.1,  # JPEG XL lossless
    "1.2.840.10008.1.2.4.111": 53.1,  # JPEG XL JPEG recompression
    "1.2.840.10008.1.2.4.112": 53.1,  # JPEG XL
}
UNCOMPRESSED_NS_PER_SAMPLE = 1.0


def extra_decode_seconds(source: FilesConnector, first: SourceRef) -> float:
    """Seconds that decoding one input like ``first`` takes beyond decoding it
    uncompressed; 0 when its header cannot say (unreadable, no image, an uncompressed
    or unknown syntax)."""
    record = next(source.fetch([first]))
    if record.header is None:
        return 0.0
    ns = DECODE_NS_PER_SAMPLE.get(record.header.transfer_syntax_uid or "")
    if ns is None:
        return 0.0
    context = RunContext("job-size", datetime.now(UTC))
    flattened = Flatten()(Batch((record,), context)).records[0]
    row = flattened.outputs.get(INSTANCES) or {}
    try:
        samples = (
            int(row.get("Rows") or 0)
            * int(row.get("Columns") or 0)
            * int(row.get("NumberOfFrames") or 1)
            * int(row.get("SamplesPerPixel") or 1)
        )
    except (TypeError, ValueError):
        return 0.0
    seconds = samples * (ns - UNCOMPRESSED_NS_PER_SAMPLE) * 1e-9
    logger.debug(
        "decoding an input of this job: about %.1f ms more than uncompressed", seconds * 1e3
    )
    return seconds
