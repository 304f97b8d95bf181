"""The README's Python examples run as written, on a tiny synthetic BoneMet tree.

The snippets under the sections named in ``SECTIONS`` are executed in order in one namespace,
in a folder holding ``OUT/`` (``bonemet-dask synth``'s tree: mouse 851, weeks 0-2), as a reader
would paste them after ``synth``.  The tree's products are voxelised: at ``tiny`` (640 um) a
reconstruction's blur merges the fibula into the tibia and the junction cannot be found.
"""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SECTIONS = (
    "Source catalog",
    "Conversion to Zarr",
    "Reconstruction",
    "Segmentation, registration, composite and metrics",
)


def python_blocks(text: str, sections: tuple[str, ...]) -> list[tuple[str, str]]:
    """``(section, code)`` of every fenced python block under the named ``###`` sections."""
    blocks = []
    for part in re.split(r"^### ", text, flags=re.MULTILINE)[1:]:
        title = part.splitlines()[0].strip()
        if title in sections:
            blocks += [(title, code) for code in re.findall(r"```python\n(.*?)```", part, re.S)]
    return blocks


def test_readme_sections_have_python():
    found = {title for title, _ in python_blocks(README.read_text(), SECTIONS)}
    assert found == set(SECTIONS)


def test_readme_python_examples_run(tmp_path, monkeypatch):
    import dask

    from bonemet_dask.synth import SynthConfig, generate

    config = SynthConfig(mice=1, weeks=3, size="tiny", seed=0, products="voxelised")
    generate(str(tmp_path / "OUT"), config)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    with dask.config.set(scheduler="threads"):
        for title, code in python_blocks(README.read_text(), SECTIONS):
            try:
                exec(compile(code, f"README.md ({title})", "exec"), namespace)
            except Exception as err:
                pytest.fail(f"README section {title!r} fails: {err!r}\n{code}")
    # the API reconstructs on the grid the CLI writes (NRecon's, recorded at convert)
    tree = namespace["tree"]
    assert namespace["grey"].shape == tree["recon_ct/851/both/week0"].dataset["image"].shape
    # resample took the output grid from the registration result
    result, registered = namespace["result"], namespace["registered_week0"]
    assert registered.shape == tuple(result.shape)
    assert registered.attrs["voxel_size_um"] == pytest.approx(list(result.spacing_um))
    assert list(namespace["table"]["mouse"]) == ["851"]
