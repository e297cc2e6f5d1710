"""Registry of the bit flags of the science mask image (``mskimg.fits``, uint16).

ZTF's definitions (``ztf-facts.md`` §5) where one exists; zsds uses bits ZTF leaves reserved
for what it has no bit for (hot pixel 6, bad column 13, edge 14). One table, used by the
detrending kernel, by the FITS header writer (``MSKBIT<n>`` cards) and by the documentation.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MaskBit", "MASK", "MASK_BITS", "BAD_PIXEL_BITS", "mask_header_cards", "describe"]


@dataclass(frozen=True)
class MaskBit:
    name: str
    bit: int
    description: str

    @property
    def value(self) -> int:
        return 1 << self.bit


MASK_BITS = (
    MaskBit("TRACK", 0, "aircraft/satellite track"),
    MaskBit("DETECTED", 1, "pixel of a source-extractor detection"),
    MaskBit("LOWRESP", 2, "low responsivity (high-frequency flat)"),
    MaskBit("HIGHRESP", 3, "high responsivity (high-frequency flat)"),
    MaskBit("NOISY", 4, "noisy pixel (bias-stack scatter)"),
    MaskBit("GHOST", 5, "ghost from a bright source"),
    MaskBit("HOT", 6, "hot pixel (master bias) [zsds; reserved in ZTF]"),
    MaskBit("SPIKE", 7, "pixel spike: cosmic-ray hit"),
    MaskBit("SATURATED", 8, "saturated or bled (raw ADU >= SATURATE), dilated by 1 pixel"),
    MaskBit("DEAD", 9, "dead (unresponsive) pixel"),
    MaskBit("NAN", 10, "not a number / no data"),
    MaskBit("PSFSOURCE", 11, "contains a PSF-fit source position"),
    MaskBit("HALO", 12, "halo of a bright source"),
    MaskBit("BADCOL", 13, "bad column [zsds; reserved in ZTF]"),
    MaskBit("EDGE", 14, "within the edge margin of the quadrant [zsds; reserved in ZTF]"),
)

#: Name -> value.
MASK = {b.name: b.value for b in MASK_BITS}

#: Pixels with any of these bits are excluded from photometry and fits.
BAD_PIXEL_BITS = (MASK["TRACK"] | MASK["LOWRESP"] | MASK["HIGHRESP"] | MASK["NOISY"]
                  | MASK["GHOST"] | MASK["HOT"] | MASK["SPIKE"] | MASK["SATURATED"]
                  | MASK["DEAD"] | MASK["NAN"] | MASK["BADCOL"])


def mask_header_cards() -> list[tuple[str, int, str]]:
    """(keyword, value, comment) cards documenting every bit in a FITS header."""
    return [(f"MSKBIT{b.bit:02d}", b.value, f"{b.name}: {b.description}"[:68]) for b in MASK_BITS]


def describe(value: int) -> list[str]:
    """Names of the bits set in a mask value."""
    return [b.name for b in MASK_BITS if value & b.value]
