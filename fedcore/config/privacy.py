"""How updates are protected: CKKS encryption, secure aggregation, differential privacy."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from fedcore.config.base import _Model


class CkksSpec(_Model):
    """CKKS homomorphic aggregation (TenSEAL): parameters made for add-only sums."""

    poly_modulus_degree: Literal[4096, 8192, 16384] = Field(
        8192, description="ring dimension N; one ciphertext holds N/2 slots"
    )
    coeff_mod_bit_sizes: list[int] = Field(
        default_factory=lambda: [60, 40],
        min_length=2,
        max_length=8,
        description="modulus chain; addition needs no multiplicative depth, so [60, 40] suffices",
    )
    scale_bits: int = Field(40, ge=16, le=60, description="log2 of the CKKS scale (unpacked mode)")
    packing: bool = Field(
        True, description="pack several quantized values per slot (BatchCrypt-style)"
    )
    values_per_slot: int = Field(3, ge=1, le=8, description="values packed into one slot")
    clip: float = Field(
        0.1,
        gt=0.0,
        description=(
            "packed mode: each update value (local minus global weight) is clipped to "
            "[-clip, clip] before quantizing; smaller is finer. Adam moves a weight by about "
            "lr per step, so local_epochs * lr (x batches per epoch) is a good bound"
        ),
    )

    @field_validator("coeff_mod_bit_sizes")
    @classmethod
    def _bit_sizes(cls, sizes: list[int]) -> list[int]:
        bad = [b for b in sizes if not 20 <= b <= 60]
        if bad:
            raise ValueError(f"coefficient modulus bit sizes must be in 20..60; got {bad}")
        return sizes


class SecAggSpec(_Model):
    """SecAgg+ (Flower's ``SecAggPlusWorkflow``): masks that cancel in the sum."""

    num_shares: int = Field(
        3, ge=2, description="how many other sites receive a share of each site's secrets"
    )
    reconstruction_threshold: int = Field(
        2,
        ge=2,
        description="shares needed to rebuild a dropped site's mask; tolerates num_shares - threshold dropouts",
    )
    clipping_range: float = Field(
        8.0, gt=0.0, description="values are clipped to +-this before masking"
    )
    quantization_range: int = Field(
        2**22, ge=2**8, description="quantization levels over the clipping range"
    )
    max_weight: float = Field(
        100_000.0, gt=0.0, description="largest num_examples a site's weight may carry"
    )

    @model_validator(mode="after")
    def _threshold(self) -> SecAggSpec:
        if self.reconstruction_threshold > self.num_shares:
            raise ValueError(
                f"reconstruction_threshold ({self.reconstruction_threshold}) cannot exceed "
                f"num_shares ({self.num_shares})"
            )
        return self


class DpSpec(_Model):
    """Differential privacy: per-site clipping and central Gaussian noise, with an RDP accountant."""

    noise_multiplier: float = Field(
        ..., description="Gaussian noise std as a multiple of clip_norm (must be > 0)"
    )
    clip_norm: float = Field(
        ..., gt=0.0, description="each site's update is clipped to this L2 norm"
    )
    delta: float = Field(1e-5, gt=0.0, lt=1.0, description="the delta of (epsilon, delta)-DP")

    @field_validator("noise_multiplier")
    @classmethod
    def _noise(cls, z: float) -> float:
        if not z > 0.0:
            raise ValueError(
                f"noise_multiplier is {z}: without noise there is no differential privacy. "
                "Set it above 0 (e.g. 1.0), or remove privacy.dp"
            )
        return z


class PrivacySpec(_Model):
    """How updates are protected on their way to the coordinator."""

    mode: Literal["plaintext", "ckks", "secagg+"] = Field(
        "plaintext", description="plaintext (tests only), ckks or secagg+"
    )
    dp: DpSpec | None = Field(
        None, description="add differential privacy (combinable with any mode)"
    )
    ckks: CkksSpec = CkksSpec()
    secagg: SecAggSpec = SecAggSpec()
