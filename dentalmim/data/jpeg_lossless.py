"""A small, numpy-vectorised JPEG lossless (ITU-T T.81 Process 14) encoder for single-component images.

pydicom ships no encoder for the JPEG lossless transfer syntaxes (1.2.840.10008.1.2.4.57 and .70), yet dental
archives are full of them, so tests and the synthetic corpus need a way to write such files. This module writes
the minimal interchange stream: ``SOI, SOF3, DHT, SOS, <entropy-coded data>, EOI`` with one Huffman table that is
optimal for the image (built over the difference categories SSSS 0..16, code lengths limited to 16 bits, the
all-ones code word reserved as T.81 Annex C requires). Only first-order prediction (selection value 1) is
written, which is valid for both transfer syntaxes.

Prediction rules (T.81 H.1.2.1): the first sample of the image is predicted by ``2 ** (P - 1)``, the rest of
the first row by the sample to the left (Ra), the first sample of every other row by the sample above (Rb),
and every other sample by Ra. Differences are taken modulo 2**16.
"""

from __future__ import annotations

import heapq

import numpy as np

_N_CATEGORIES = 17  # SSSS = 0..16
_MAX_CODE_LENGTH = 16


def encode_jpeg_lossless(pixels: np.ndarray, precision: int) -> bytes:
    """Encodes a grey image as a JPEG lossless (SOF3, predictor 1) code stream.

    Args:
        pixels: (H, W) integer array; only the low ``precision`` bits of each sample are encoded (signed DICOM
            data is therefore stored in two's complement, as DICOM requires).
        precision: sample precision P in bits, 2..16 (DICOM BitsStored).

    Returns:
        The complete JPEG code stream (starts with FFD8, ends with FFD9).
    """
    if pixels.ndim != 2 or pixels.size == 0:
        raise ValueError(f"pixels should be a non-empty (H, W) array, got shape {pixels.shape}.")
    if not 2 <= precision <= 16:
        raise ValueError(f"precision should be in [2, 16], got {precision}.")
    if not np.issubdtype(pixels.dtype, np.integer):
        raise ValueError(f"pixels should have an integer dtype, got {pixels.dtype}.")
    rows, cols = pixels.shape
    if rows > 65535 or cols > 65535:
        raise ValueError(f"image should be at most 65535 x 65535 for JPEG, got {rows} x {cols}.")
    samples = pixels.astype(np.int64) & ((1 << precision) - 1)
    diffs = _differences(samples, precision)
    ssss = _categories(diffs)
    lengths = _code_lengths(np.bincount(ssss, minlength=_N_CATEGORIES))
    codes = _canonical_codes(lengths)
    scan = _entropy_code(diffs, ssss, codes, lengths)
    header = _sof3(precision, rows, cols) + _dht(lengths) + _sos()
    return b"\xff\xd8" + header + scan + b"\xff\xd9"


def _differences(samples: np.ndarray, precision: int) -> np.ndarray:
    """(H, W) samples -> (H*W,) signed prediction differences in scan order, in [-32768, 32767]."""
    pred = np.empty_like(samples)
    pred[:, 1:] = samples[:, :-1]
    pred[1:, 0] = samples[:-1, 0]
    pred[0, 0] = 1 << (precision - 1)
    diffs = (samples - pred).ravel() & 0xFFFF
    return np.where(diffs >= 0x8000, diffs - 0x10000, diffs)


def _categories(diffs: np.ndarray) -> np.ndarray:
    """Difference magnitude categories SSSS (bit length of |d|), (N,) int64 in 0..16."""
    _, exponent = np.frexp(np.abs(diffs).astype(np.float64))
    return exponent.astype(np.int64)


def _code_lengths(freq: np.ndarray) -> np.ndarray:
    """Huffman code lengths (17,) for the categories, limited to 16 bits, with the all-ones code reserved.

    A reserved pseudo-symbol of frequency 1 takes the last code of the longest length (T.81 Annex K.2), so no
    real symbol is assigned the all-ones code word.
    """
    symbols = [s for s in range(_N_CATEGORIES) if freq[s] > 0] + [_N_CATEGORIES]
    weights = {s: int(freq[s]) for s in symbols[:-1]}
    weights[_N_CATEGORIES] = 0
    depth = _huffman_depths(weights)
    counts = np.bincount(list(depth.values()), minlength=64)
    counts = _limit_lengths(counts)
    # Most frequent symbols get the shortest codes; the reserved symbol sorts last (weight 0).
    order = sorted(symbols, key=lambda s: (-weights[s], s == _N_CATEGORIES, s))
    lengths = np.zeros(_N_CATEGORIES + 1, dtype=np.int64)
    flat = np.repeat(np.arange(counts.size), counts)
    lengths[order] = flat[: len(order)]
    return lengths[:_N_CATEGORIES]


def _huffman_depths(weights: dict[int, int]) -> dict[int, int]:
    """Plain Huffman tree depths; a single symbol gets depth 1."""
    heap = [(w, s, (s,)) for s, w in weights.items()]
    heapq.heapify(heap)
    depth = {s: 0 for s in weights}
    while len(heap) > 1:
        w1, t1, g1 = heapq.heappop(heap)
        w2, t2, g2 = heapq.heappop(heap)
        for s in g1 + g2:
            depth[s] += 1
        heapq.heappush(heap, (w1 + w2, min(t1, t2), g1 + g2))
    return {s: max(d, 1) for s, d in depth.items()}


def _limit_lengths(counts: np.ndarray) -> np.ndarray:
    """Moves codes longer than 16 bits up the tree (T.81 Annex K.3 'Adjust_BITS'); counts[i] = #codes of length i."""
    counts = counts.copy()
    for i in range(counts.size - 1, _MAX_CODE_LENGTH, -1):
        while counts[i] > 0:
            j = i - 2
            while counts[j] == 0:
                j -= 1
            counts[i] -= 2
            counts[i - 1] += 1
            counts[j + 1] += 2
            counts[j] -= 1
    return counts


def _canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical code words (T.81 Annex C) for symbols ordered by (length, symbol value)."""
    codes = np.zeros_like(lengths)
    code, prev_len = 0, 0
    for s in sorted((s for s in range(lengths.size) if lengths[s] > 0), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[s]) - prev_len
        codes[s], prev_len = code, int(lengths[s])
        code += 1
    return codes


def _entropy_code(diffs: np.ndarray, ssss: np.ndarray, codes: np.ndarray, lengths: np.ndarray) -> bytes:
    """Huffman code + additional bits per sample, packed MSB first, padded with 1s and byte-stuffed."""
    extra_len = np.where(ssss == 16, 0, ssss)
    extra = np.where(diffs < 0, diffs + (np.int64(1) << extra_len) - 1, diffs) & ((np.int64(1) << extra_len) - 1)
    nbits = lengths[ssss] + extra_len
    words = (codes[ssss] << extra_len) | extra
    ends = np.cumsum(nbits)
    total = int(ends[-1])
    pad = (-total) % 8
    bits = np.ones(total + pad, dtype=np.uint8)
    starts = ends - nbits
    for k in range(int(nbits.max())):
        m = nbits > k
        bits[starts[m] + k] = (words[m] >> (nbits[m] - 1 - k)) & 1
    data = np.packbits(bits)
    ff = np.flatnonzero(data == 0xFF)
    return np.insert(data, ff + 1, 0).tobytes()


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload


def _sof3(precision: int, rows: int, cols: int) -> bytes:
    payload = bytes([precision]) + rows.to_bytes(2, "big") + cols.to_bytes(2, "big")
    return _segment(0xC3, payload + bytes([1, 1, 0x11, 0]))  # 1 component: id 1, H=V=1, Tq=0


def _dht(lengths: np.ndarray) -> bytes:
    bits = np.bincount(lengths[lengths > 0], minlength=_MAX_CODE_LENGTH + 1)[1 : _MAX_CODE_LENGTH + 1]
    values = sorted((s for s in range(lengths.size) if lengths[s] > 0), key=lambda s: (lengths[s], s))
    return _segment(0xC4, bytes([0x00]) + bytes(bits.astype(np.uint8).tolist()) + bytes(values))


def _sos() -> bytes:
    # Ns=1, Cs=1, Td/Ta=0; Ss = predictor 1; Se = 0; Ah/Al (point transform) = 0.
    return _segment(0xDA, bytes([1, 1, 0x00, 1, 0, 0]))
