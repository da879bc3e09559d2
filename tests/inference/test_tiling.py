"""Tiled inference: the grid covers the image, boxes map back exactly, duplicates across tiles merge."""

from __future__ import annotations

import pytest
import torch

from dentalmim.inference.tiling import (extract_tiles, merge_tile_detections, tile_grid, tile_origins,
                                        tiled_detect)
from dentalmim.models.detector import Detections

torch.set_num_threads(1)


@pytest.mark.parametrize(("length", "tile", "overlap"), [(100, 32, 0.25), (1500, 384, 0.25), (3000, 384, 0.5),
                                                         (384, 384, 0.25), (385, 384, 0.0), (50, 64, 0.25)])
def test_tile_origins_cover_the_axis_with_the_requested_overlap(length: int, tile: int, overlap: float) -> None:
    starts = tile_origins(length, tile, overlap)
    assert starts[0] == 0 and starts == sorted(starts)
    covered = torch.zeros(max(length, tile), dtype=torch.bool)
    for s in starts:
        covered[s:s + tile] = True
    assert covered[:length].all()
    if length > tile:
        assert starts[-1] == length - tile  # no tile hangs over the border
        assert all(b - a <= tile * (1 - overlap) + 1 for a, b in zip(starts, starts[1:]))
    else:
        assert starts == [0]


def test_grid_of_a_small_image_uses_small_padded_tiles() -> None:
    grid = tile_grid(40, 200, tile_size=96, overlap=0.25, multiple=16)
    assert grid.tile_size == (64, 96)  # 40 rounded up to the patch multiple, then to 4 patches
    assert tile_grid(70, 200, tile_size=96).tile_size == (80, 96)  # 70 rounded up to the patch multiple
    assert tile_grid(20, 20, tile_size=32).tile_size == (32, 32)  # never beyond the tile size
    assert grid.padded_size == (64, 200)
    assert {y for y, _ in grid.origins} == {0}
    image = torch.rand(40, 200)
    tiles = extract_tiles(image, grid)
    assert tiles.shape == (len(grid.origins), 1, 64, 96)
    for tile, (y, x) in zip(tiles, grid.origins):
        assert torch.equal(tile[0, :40], image[y:y + 40, x:x + 96])
        assert (tile[0, 40:] == 0).all()
    with pytest.raises(ValueError, match="tile_size should be a positive multiple of 16"):
        tile_grid(100, 100, tile_size=40)
    with pytest.raises(ValueError, match=r"overlap should be in \[0, 1\)"):
        tile_grid(100, 100, tile_size=32, overlap=1.0)


def blob_detector(half: float = 4.0):
    """Fake tile detector: one box of side 2 * half around the brightest pixel of each tile, clipped to the tile;
    the tile probability is the tile's maximum value."""

    def detect(tiles: torch.Tensor) -> tuple[list[Detections], torch.Tensor]:
        dets = []
        for tile in tiles[:, 0]:
            if tile.max() < 0.5:
                dets.append(Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long)))
                continue
            row, col = divmod(int(tile.argmax()), tile.shape[1])
            cx, cy = col + 0.5, row + 0.5
            box = torch.tensor([[cx - half, cy - half, cx + half, cy + half]])
            box = box.clamp(min=0).minimum(torch.tensor([tile.shape[1], tile.shape[0]] * 2, dtype=torch.float))
            dets.append(Detections(box, torch.tensor([float(tile.max())]), torch.zeros(1, dtype=torch.long)))
        return dets, tiles.amax(dim=(1, 2, 3))

    return detect


def test_a_tile_local_box_appears_once_at_its_global_location() -> None:
    image = torch.zeros(100, 150)
    image[52, 81] = 0.9  # seen by several overlapping tiles
    result = tiled_detect(blob_detector(), image, tile_size=32, overlap=0.5, batch_size=5)
    grid = tile_grid(100, 150, 32, 0.5)
    seen_by = sum(y <= 52 < y + 32 and x <= 81 < x + 32 for y, x in grid.origins)
    assert seen_by >= 4 and result.num_tiles == len(grid.origins)
    assert result.boxes.tolist() == [[77.5, 48.5, 85.5, 56.5]]  # centre (81.5, 52.5): x = column, y = row
    assert result.scores.tolist() == pytest.approx([0.9])
    assert result.image_prob == pytest.approx(0.9)  # max over tiles


def test_a_box_cut_by_a_tile_border_merges_into_the_whole_one() -> None:
    image = torch.zeros(64, 112)
    image[20, 50] = 0.8
    grid = tile_grid(64, 112, 32, 0.25)
    assert (0, 20) in grid.origins and (0, 40) in grid.origins  # the box is cut by the first, whole in the second
    result = tiled_detect(blob_detector(half=6.0), image, tile_size=32, overlap=0.25)
    assert result.boxes.tolist() == [[44.5, 14.5, 56.5, 26.5]]
    assert result.image_prob == pytest.approx(0.8)


def test_distinct_lesions_and_classes_stay_separate() -> None:
    grid = tile_grid(64, 64, 32, 0.5)
    dets = [Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long)) for _ in grid.origins]
    box = torch.tensor([[2.0, 2.0, 10.0, 10.0], [2.0, 2.0, 10.0, 10.0], [20.0, 20.0, 28.0, 28.0]])
    dets[0] = Detections(box, torch.tensor([0.9, 0.6, 0.7]), torch.tensor([0, 1, 0]))
    boxes, scores, labels = merge_tile_detections(dets, grid)
    assert scores.tolist() == pytest.approx([0.9, 0.7, 0.6]) and labels.tolist() == [0, 0, 1]
    assert grid.origins[1] == (0, 16)
    pair = list(dets)
    pair[0] = Detections(torch.tensor([[18.0, 2.0, 26.0, 10.0]]), torch.tensor([0.9]), torch.tensor([0]))
    pair[1] = Detections(torch.tensor([[4.0, 2.0, 12.0, 10.0]]), torch.tensor([0.3]), torch.tensor([0]))  # x + 16
    nms_boxes, nms_scores, _ = merge_tile_detections(pair, grid)
    assert nms_boxes.tolist() == [[18.0, 2.0, 26.0, 10.0]] and nms_scores.tolist() == pytest.approx([0.9])
    wbf_boxes, _, _ = merge_tile_detections(pair, grid, method="wbf")
    assert wbf_boxes[0].tolist() == pytest.approx([18.5, 2.0, 26.5, 10.0])  # score-weighted mean of the cluster
    with pytest.raises(ValueError, match="method should be one of"):
        merge_tile_detections(dets, grid, method="mean")


def test_resize_factors_resample_before_tiling_and_boxes_map_back() -> None:
    ys, xs = torch.meshgrid(torch.arange(100) + 0.5, torch.arange(150) + 0.5, indexing="ij")
    image = torch.exp(-((xs - 83.0) ** 2 + (ys - 53.0) ** 2) / 18.0)  # one blob peaking at (83, 53)
    for factors, work in [((2.0, 2.0), (200, 300)), ((0.5, 0.5), (50, 75)), ((1.0, 1.0), (100, 150))]:
        result = tiled_detect(blob_detector(half=6.0), image, tile_size=32, overlap=0.5, factors=factors)
        assert result.num_tiles == len(tile_grid(*work, 32, 0.5).origins)
        (box,) = result.boxes.tolist()  # one blob, back in original pixels: side 12 work px / factor
        assert box[2] - box[0] == pytest.approx(12.0 / factors[1], abs=1e-4)
        assert ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2) == pytest.approx((83.0, 53.0), abs=1.0 / factors[0])
