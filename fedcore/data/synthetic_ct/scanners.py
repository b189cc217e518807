"""CT scanner profiles, one per hospital: geometry, resolution, noise, calibration and header names."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ScannerProfile:
    """One CT scanner model and protocol, as a hospital would have it.

    Attributes:
        name: Registry name, e.g. ``"ge-standard"``.
        manufacturer: DICOM ``Manufacturer``.
        model: DICOM ``ManufacturerModelName``.
        kernel: DICOM ``ConvolutionKernel``.
        pixel_spacing_mm: In-plane pixel spacing (rows and columns).
        slice_thickness_mm: Slice thickness, also the spacing between slices.
        noise_hu: Standard deviation of the image noise in HU.
        blur_sigma_mm: Gaussian in-plane resolution of the kernel (sharper kernels are smaller).
        hu_offset: Calibration offset added to every voxel, in HU.
        matrix: Rows and columns of each slice.
        slices: Number of slices per series.
        kvp: Tube voltage written to ``KVP``.
    """

    name: str
    manufacturer: str
    model: str
    kernel: str
    pixel_spacing_mm: float
    slice_thickness_mm: float
    noise_hu: float
    blur_sigma_mm: float
    hu_offset: float
    matrix: int = 128
    slices: int = 64
    kvp: int = 120

    def __post_init__(self) -> None:
        for field_name in ("pixel_spacing_mm", "slice_thickness_mm", "noise_hu", "blur_sigma_mm"):
            value = getattr(self, field_name)
            if not value > 0:
                raise ValueError(
                    f"ScannerProfile {self.name!r}: {field_name} must be > 0, got {value!r}"
                )
        if self.matrix < 96 or self.slices < 24:
            raise ValueError(
                f"ScannerProfile {self.name!r}: need matrix >= 96 and slices >= 24 to hold the "
                f"chest wall and a 30 mm nodule, got matrix={self.matrix}, slices={self.slices}"
            )


SCANNERS: dict[str, ScannerProfile] = {
    p.name: p
    for p in (
        ScannerProfile(
            name="siemens-sharp",
            manufacturer="SIEMENS",
            model="SOMATOM Definition AS+",
            kernel="B70f",
            pixel_spacing_mm=0.74,
            slice_thickness_mm=1.0,
            noise_hu=38.0,
            blur_sigma_mm=0.35,
            hu_offset=3.0,
            slices=80,
        ),
        ScannerProfile(
            name="ge-standard",
            manufacturer="GE MEDICAL SYSTEMS",
            model="LightSpeed VCT",
            kernel="STANDARD",
            pixel_spacing_mm=0.78,
            slice_thickness_mm=1.25,
            noise_hu=20.0,
            blur_sigma_mm=0.6,
            hu_offset=-2.0,
            slices=64,
        ),
        ScannerProfile(
            name="philips-smooth",
            manufacturer="Philips",
            model="Brilliance 64",
            kernel="A",
            pixel_spacing_mm=0.82,
            slice_thickness_mm=2.0,
            noise_hu=11.0,
            blur_sigma_mm=0.85,
            hu_offset=4.0,
            slices=44,
            kvp=100,
        ),
        ScannerProfile(
            name="canon-thick",
            manufacturer="TOSHIBA",
            model="Aquilion ONE",
            kernel="FC13",
            pixel_spacing_mm=0.86,
            slice_thickness_mm=2.5,
            noise_hu=15.0,
            blur_sigma_mm=0.75,
            hu_offset=-4.0,
            slices=36,
        ),
    )
}
"""Named scanner profiles; the scenario picks one per hospital."""


def scanner_profile(scanner: str | ScannerProfile) -> ScannerProfile:
    """Resolve a scanner name (or pass a profile through).

    Args:
        scanner: A key of :data:`SCANNERS` or a :class:`ScannerProfile`.

    Returns:
        The profile.

    Raises:
        KeyError: The name is not in :data:`SCANNERS`; the message lists the valid names.
    """
    if isinstance(scanner, ScannerProfile):
        return scanner
    try:
        return SCANNERS[scanner]
    except KeyError:
        raise KeyError(
            f"unknown scanner profile {scanner!r}; expected one of {sorted(SCANNERS)} "
            "or a ScannerProfile instance"
        ) from None
