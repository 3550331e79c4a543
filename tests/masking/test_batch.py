"""pad_batch, PaddedBatch and collate_padded against hand-built references."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from cnnkit import ShapeError
from cnnkit.masking import IGNORE_INDEX, PaddedBatch, collate_padded, pad_batch


@pytest.mark.parametrize("spatial", [(7,), (5, 9), (3, 4, 6)])
def test_pad_batch_places_samples_top_left_and_round_trips(spatial):
    g = torch.Generator().manual_seed(0)
    shapes = [spatial, tuple(max(1, s - 2) for s in spatial), tuple(s + 1 for s in spatial)]
    images = [torch.randn(2, *s, generator=g) for s in shapes]
    batch = pad_batch(images)
    canvas = tuple(max(s[i] for s in shapes) for i in range(len(spatial)))
    assert batch.data.shape == (3, 2, *canvas)
    assert batch.sizes.tolist() == [list(s) for s in shapes]
    mask = batch.mask()
    assert mask.shape == (3, 1, *canvas) and mask.dtype == torch.bool
    for n, (img, s) in enumerate(zip(images, shapes)):
        region = (n, slice(None), *(slice(0, k) for k in s))
        assert torch.equal(batch.data[region], img)
        expected_mask = torch.zeros(canvas, dtype=torch.bool)
        expected_mask[tuple(slice(0, k) for k in s)] = True
        assert torch.equal(mask[n, 0], expected_mask)
        assert torch.count_nonzero(batch.data[n] * ~mask[n]) == 0
        assert torch.equal(batch.unpad()[n], img)
    total = sum(torch.tensor(s).prod().item() for s in shapes)
    assert batch.padding_fraction() == pytest.approx(1 - total / (3 * torch.tensor(canvas).prod().item()))


def test_multiple_of_rounds_the_canvas():
    batch = pad_batch([torch.ones(1, 5, 9), torch.ones(1, 3, 3)], multiple_of=(4, 8))
    assert batch.canvas == (8, 16)


def test_collate_pads_images_and_label_maps_for_a_dataloader():
    data = [(torch.ones(3, 4, 5), torch.full((4, 5), 2), 7), (torch.ones(3, 2, 6), torch.full((2, 6), 1), 3)]
    images, labels, targets = next(iter(DataLoader(data, batch_size=2, collate_fn=collate_padded)))
    assert isinstance(images, PaddedBatch) and images.canvas == (4, 6)
    assert labels.shape == (2, 4, 6)
    assert (labels[0, :, 5] == IGNORE_INDEX).all() and (labels[1, 2:] == IGNORE_INDEX).all()
    assert (labels[0, :, :5] == 2).all()
    assert targets.tolist() == [7, 3]
    one_hot = [torch.ones(4, 3, 2), torch.ones(4, 1, 2)]
    _, maps = collate_padded([(torch.ones(1, 3, 2), one_hot[0]), (torch.ones(1, 1, 2), one_hot[1])])
    assert maps.shape == (2, 4, 3, 2) and maps[1, :, 1:].abs().sum() == 0  # all-zero one-hot = no label


def test_bad_input():
    with pytest.raises(ShapeError, match="at least one tensor"):
        pad_batch([])
    with pytest.raises(ShapeError, match=r"same rank and channel count as images\[0\] \(3, 4, 4\)"):
        pad_batch([torch.zeros(3, 4, 4), torch.zeros(3, 4)])
    with pytest.raises(ShapeError, match="share dtype and device"):
        pad_batch([torch.zeros(1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.float64)])
    with pytest.raises(ShapeError, match=r"sizes must have shape \(N, D\)"):
        PaddedBatch(torch.zeros(2, 1, 4, 4), torch.tensor([4, 4]))
    with pytest.raises(ShapeError, match="multiple_of"):
        pad_batch([torch.zeros(1, 2, 2)], multiple_of=0)


# --- values the batch cannot hold -------------------------------------------------------------------------


@pytest.mark.parametrize("sizes", [[[-1, 3], [4, 4]], [[4, 5], [4, 4]]], ids=["negative", "beyond_canvas"])
def test_padded_batch_sizes_must_lie_on_the_canvas(sizes):
    with pytest.raises(ShapeError, match=r"sizes must lie in \[0, canvas\] = \[0, \(4, 4\)\].*Received sizes\[0\]="):
        PaddedBatch(torch.zeros(2, 1, 4, 4), torch.tensor(sizes))


def test_padded_batch_sizes_must_be_an_integer_tensor():
    with pytest.raises(ShapeError, match=r"sizes must be an integer tensor \(N, D\)\. Received torch.float32"):
        PaddedBatch(torch.zeros(2, 1, 4, 4), torch.tensor([[4.0, 4.0], [2.0, 2.0]]))
    with pytest.raises(ShapeError, match=r"sizes must be an integer tensor \(N, D\)\. Received list"):
        PaddedBatch(torch.zeros(2, 1, 4, 4), [[4, 4], [2, 2]])


@pytest.mark.parametrize(("dtype", "value"), [(torch.long, 0.5), (torch.uint8, -1), (torch.uint8, 256),
                                              (torch.int32, float("nan")), (torch.long, "0"), (torch.float32, True)])
def test_pad_batch_value_must_fit_the_dtype(dtype, value):
    images = [torch.ones(1, 2, 3, dtype=dtype), torch.ones(1, 3, 2, dtype=dtype)]
    with pytest.raises(ShapeError, match=r"value must be"):
        pad_batch(images, value=value)  # pad_batch(int images, value=0.5) padded 0


def test_pad_batch_integer_value_in_integer_images_is_exact():
    batch = pad_batch([torch.ones(1, 1, 2, dtype=torch.uint8), torch.ones(1, 2, 1, dtype=torch.uint8)], value=255)
    assert batch.data.dtype == torch.uint8
    assert batch.data[0, 0].tolist() == [[1, 1], [255, 255]] and batch.data[1, 0].tolist() == [[1, 255], [1, 255]]


def test_collate_padded_refuses_maps_of_mixed_dtype():
    samples = [(torch.ones(1, 2, 2), torch.tensor([[1, 2], [0, 1]])), (torch.ones(1, 2, 2), torch.full((2, 2), 1.7))]
    with pytest.raises(ShapeError, match=r"share dtype.*sample 0's torch.int64 map.*sample 1's torch.float32 map"):
        collate_padded(samples)  # the float map was truncated to 1 in a long canvas


def test_collate_padded_pads_bool_maps_with_false_and_refuses_an_unholdable_label_pad():
    samples = [(torch.ones(1, 1, 2), torch.tensor([[True, True]])),
               (torch.ones(1, 2, 1), torch.tensor([[True], [True]]))]
    _, maps = collate_padded(samples)
    assert maps.tolist() == [[[True, True], [False, False]], [[True, False], [True, False]]]  # was padded True
    u8 = [(torch.ones(1, 1, 2), torch.tensor([[1, 2]], dtype=torch.uint8)),
          (torch.ones(1, 2, 1), torch.tensor([[3], [4]], dtype=torch.uint8))]
    with pytest.raises(ShapeError, match=r"label_pad_value must be .*torch.uint8.*Received label_pad_value=-100"):
        collate_padded(u8)
    assert collate_padded(u8, label_pad_value=255)[1].tolist() == [[[1, 2], [255, 255]], [[3, 255], [4, 255]]]
    with pytest.raises(ShapeError, match=r"samples must be a non-empty sequence"):
        collate_padded([])
