"""Bad data fails at load time with an hf_metaprune error naming the split, column and row (issue 10).

Every dataset here is a few tiny synthetic parquet files written with pyarrow (🤗 features in the schema metadata,
as the Hub writes them), so each case is fast, offline and deterministic.
"""
import io
import os

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from hf_metaprune import load_image_classification, load_text_classification

CLASSES4 = datasets.ClassLabel(names=["a", "b", "c", "d"])


def png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def encoded(pixels: np.ndarray) -> dict:
    return {"bytes": png(pixels), "path": None}


def row_image(row: int) -> dict:
    """A 4x4 RGB image whose red and green values spell its row number, to check which rows were loaded."""
    return encoded(np.full((4, 4, 3), (row // 256, row % 256, 9), dtype=np.uint8))


def image_row_ids(images: torch.Tensor) -> list[int]:
    return (images[:, 0, 0, 0].long() * 256 + images[:, 1, 0, 0].long()).tolist()


def write(path, columns: dict, features: dict | None = None) -> str:
    """A parquet file with ``columns``; ``features`` (🤗 types) go into the schema metadata like the Hub's."""
    schema = datasets.Features(features).arrow_schema if features else None
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.table(columns, schema=schema), path)
    return str(path)


def write_images(path, labels: list, rows: range | None = None, label_feature=CLASSES4, images=None) -> str:
    rows = rows if rows is not None else range(len(labels))
    images = images if images is not None else [row_image(r) for r in rows]
    return write(path, {"img": images, "label": labels}, {"img": datasets.Image(), "label": label_feature})


def image_folder(tmp_path, train_labels: list, test_labels: list | None = None, **kw) -> str:
    write_images(tmp_path / "train.parquet", train_labels, **kw)
    if test_labels is not None:
        write_images(tmp_path / "test.parquet", test_labels, **kw)
    return str(tmp_path)


def text_folder(tmp_path, train: dict, test: dict | None = None, features: dict | None = None) -> str:
    write(tmp_path / "train.parquet", train, features)
    if test is not None:
        write(tmp_path / "test.parquet", test, features)
    return str(tmp_path)


TEXTS = ["what is a cat", "who wrote hamlet", "where is paris", "how far is the moon", "when did it rain",
         "why is the sky blue", "what is a dog", "who is there"]


# --- sharded folders (the Hub layout) ---------------------------------------------------------------------------

@pytest.mark.parametrize("subfolder", ["", "data"])
def test_every_shard_of_a_split_is_loaded(tmp_path, subfolder):
    folder = tmp_path / subfolder
    write_images(folder / "train-00000-of-00002.parquet", [r % 4 for r in range(200)], range(200))
    write_images(folder / "train-00001-of-00002.parquet", [r % 4 for r in range(200, 400)], range(200, 400))
    write_images(folder / "test-00000-of-00001.parquet", [r % 4 for r in range(500, 550)], range(500, 550))
    data = load_image_classification(str(tmp_path), val_size=40)
    assert (len(data.train), len(data.validation), len(data.test)) == (360, 40, 50)
    rows = image_row_ids(torch.cat([data.train.images, data.validation.images]))
    assert sorted(rows) == list(range(400))
    labels = torch.cat([data.train.labels, data.validation.labels]).tolist()
    assert labels == [r % 4 for r in rows]
    assert image_row_ids(data.test.images) == list(range(500, 550))
    assert data.class_names == ("a", "b", "c", "d") and data.num_classes == 4


def test_shards_are_ordered_by_index_and_max_samples_take_the_first_rows(tmp_path):
    write_images(tmp_path / "train-00001-of-00002.parquet", [1] * 10, range(10, 20))
    write_images(tmp_path / "train-00000-of-00002.parquet", [0] * 10, range(10))
    data = load_image_classification(str(tmp_path), val_size=2, max_train_samples=12)
    assert sorted(image_row_ids(torch.cat([data.train.images, data.validation.images]))) == list(range(12))


def test_a_missing_shard_is_an_error(tmp_path):
    write_images(tmp_path / "train-00000-of-00003.parquet", [0, 1], range(2))
    write_images(tmp_path / "train-00002-of-00003.parquet", [0, 1], range(2))
    with pytest.raises(ValueError, match="shards of the train split are incomplete"):
        load_image_classification(str(tmp_path), val_size=1)


def test_a_split_given_whole_and_sharded_is_an_error(tmp_path):
    write_images(tmp_path / "train.parquet", [0, 1])
    write_images(tmp_path / "train-00000-of-00001.parquet", [0, 1])
    with pytest.raises(ValueError, match="train split is given both whole and in shards"):
        load_image_classification(str(tmp_path), val_size=1)


def test_a_file_named_after_no_split_is_an_error(tmp_path):
    write_images(tmp_path / "train.parquet", [0, 1])
    write_images(tmp_path / "cifar-extra.parquet", [0, 1])
    with pytest.raises(ValueError, match="cannot tell which split .*cifar-extra.parquet"):
        load_image_classification(str(tmp_path), val_size=1)


def test_a_folder_without_parquet_files_is_not_found(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.csv").write_text("img,label\n")
    with pytest.raises(FileNotFoundError, match="no .parquet files in .* or .*data'; expected e.g. train.parquet"):
        load_image_classification(str(tmp_path), val_size=1)


def test_a_folder_without_a_train_split_says_how_to_name_files(tmp_path):
    write_images(tmp_path / "validation.parquet", [0, 1])
    with pytest.raises(ValueError, match=r"no 'train' split \(found \['validation'\]\).*train.parquet"):
        load_image_classification(str(tmp_path), val_size=1)


def test_shards_with_different_columns_are_an_error(tmp_path):
    write_images(tmp_path / "train-00000-of-00002.parquet", [0, 1], range(2))
    write(tmp_path / "train-00001-of-00002.parquet", {"img": [row_image(2)], "label": ["a"]})
    with pytest.raises(ValueError, match="every file of the train split needs the same columns"):
        load_image_classification(str(tmp_path), val_size=1)


# --- empty and unreadable files --------------------------------------------------------------------------------

def test_a_parquet_file_with_no_rows_is_an_error(tmp_path):
    folder = image_folder(tmp_path, [0, 1, 2], [])
    with pytest.raises(ValueError, match=r"the test split has no rows: \[.*test.parquet'\] hold 0 rows"):
        load_image_classification(folder, val_size=1)


def test_an_empty_shard_beside_full_ones_is_fine(tmp_path):
    write_images(tmp_path / "train-00000-of-00002.parquet", [0, 1, 2], range(3))
    write_images(tmp_path / "train-00001-of-00002.parquet", [], range(0))
    data = load_image_classification(str(tmp_path), val_size=1)
    assert len(data.train) + len(data.validation) == 3


@pytest.mark.parametrize("single_file", [False, True])
def test_a_zero_byte_parquet_file_is_an_error(tmp_path, single_file):
    (tmp_path / "train.parquet").write_bytes(b"")
    source = str(tmp_path / "train.parquet") if single_file else str(tmp_path)
    with pytest.raises(ValueError, match=r"train.parquet' \(train split\) is not a readable parquet file"):
        load_image_classification(source, val_size=1)


def test_a_file_that_is_not_parquet_is_an_error(tmp_path):
    (tmp_path / "train.parquet").write_text("label,img\n0,x\n")
    with pytest.raises(ValueError, match="is not a readable parquet file"):
        load_image_classification(str(tmp_path), val_size=1)


# --- labels ------------------------------------------------------------------------------------------------------

def test_a_label_outside_the_classlabel_range_names_split_column_and_row(tmp_path):
    folder = image_folder(tmp_path, [0, 1, 2, 4, 1])
    with pytest.raises(ValueError, match=r"train split, column 'label', row 3 .*label 4 is outside \[0, 4\)"):
        load_image_classification(folder, val_size=1)


def test_a_bad_label_in_a_later_shard_names_that_file_and_its_row(tmp_path):
    write_images(tmp_path / "train-00000-of-00002.parquet", [0, 1, 2], range(3))
    write_images(tmp_path / "train-00001-of-00002.parquet", [0, 9], range(3, 5))
    with pytest.raises(ValueError, match=r"train split, column 'label', row 4 \(row 1 of .*train-00001-of-00002"):
        load_image_classification(str(tmp_path), val_size=1)


def test_a_negative_label_is_an_error_that_explains_minus_one(tmp_path):
    folder = image_folder(tmp_path, [0, 1, 2], [1, -1], label_feature=datasets.Value("int64"))
    with pytest.raises(ValueError, match=r"test split, column 'label', row 1 .*label -1 is negative.*unlabeled"):
        load_image_classification(folder, val_size=1)


def test_a_null_label_is_an_error_not_minus_two_to_the_63(tmp_path):
    folder = image_folder(tmp_path, [0, 1, 2], [1, 0, None])
    with pytest.raises(ValueError, match=r"test split, column 'label', row 2 .*label is missing \(null\)"):
        load_image_classification(folder, val_size=1)


def test_a_fractional_label_is_an_error_and_whole_floats_are_class_ids(tmp_path):
    floats = datasets.Value("float64")
    bad = image_folder(tmp_path / "bad", [0.0, 0.5, 1.0], label_feature=floats)
    with pytest.raises(ValueError, match=r"train split, column 'label', row 1 .*label 0.5 is not a whole number"):
        load_image_classification(bad, val_size=1)
    nan = image_folder(tmp_path / "nan", [0.0, float("nan"), 1.0], label_feature=floats)
    with pytest.raises(ValueError, match=r"row 1 .*label nan is not a whole number"):
        load_image_classification(nan, val_size=1)
    good = image_folder(tmp_path / "good", [0.0, 2.0, 1.0, 2.0], [1.0, 0.0], label_feature=floats)
    data = load_image_classification(good, val_size=1, seed=0)
    order = image_row_ids(torch.cat([data.train.images, data.validation.images]))
    assert torch.cat([data.train.labels, data.validation.labels]).tolist() == [[0, 2, 1, 2][r] for r in order]
    assert data.test.labels.tolist() == [1, 0] and data.test.labels.dtype == torch.long and data.num_classes == 3


def test_string_labels_become_sorted_class_ids_shared_by_train_and_test(tmp_path):
    strings = datasets.Value("string")
    folder = image_folder(tmp_path, ["dog", "cat", "emu", "cat"], ["emu", "dog"], label_feature=strings)
    data = load_image_classification(folder, val_size=1)
    assert data.class_names == ("cat", "dog", "emu") and data.num_classes == 3
    order = image_row_ids(torch.cat([data.train.images, data.validation.images]))
    assert torch.cat([data.train.labels, data.validation.labels]).tolist() == [[1, 0, 2, 0][r] for r in order]
    assert data.test.labels.tolist() == [2, 1]


def test_a_string_test_label_unknown_to_train_is_an_error(tmp_path):
    folder = image_folder(tmp_path, ["dog", "cat", "dog"], ["cat", "owl"], label_feature=datasets.Value("string"))
    with pytest.raises(ValueError, match=r"test split, column 'label', row 1 .*'owl' is not a class of the train"):
        load_image_classification(folder, val_size=1)


def test_string_test_labels_with_integer_train_labels_are_a_type_error(tmp_path):
    write_images(tmp_path / "train.parquet", [0, 1, 2], label_feature=datasets.Value("int64"))
    write_images(tmp_path / "test.parquet", ["a"], label_feature=datasets.Value("string"))
    with pytest.raises(TypeError, match=r"test split, column 'label', row 0 .*string label 'a'"):
        load_image_classification(str(tmp_path), val_size=1)


def test_a_test_class_never_seen_in_train_is_an_error_naming_the_test_split(tmp_path):
    folder = image_folder(tmp_path, [0, 2, 1, 2], [0, 1, 3], label_feature=datasets.Value("int64"))
    with pytest.raises(ValueError, match=r"test split, column 'label', row 2 .*label 3 is a class never seen in the "
                                         r"train split .*num_classes=3"):
        load_image_classification(folder, val_size=1)


def test_num_classes_comes_from_the_whole_train_split_not_its_first_rows(tmp_path):
    folder = image_folder(tmp_path, [0, 1, 0, 1, 4], [4], label_feature=datasets.Value("int64"))
    data = load_image_classification(folder, val_size=1, max_train_samples=3)
    assert data.num_classes == 5 and data.test.labels.tolist() == [4]


def test_boolean_labels_are_a_type_error(tmp_path):
    folder = image_folder(tmp_path, [True, False, True], label_feature=datasets.Value("bool"))
    with pytest.raises(TypeError, match="train split, column 'label' holds bool; expected integer class ids"):
        load_image_classification(folder, val_size=1)


def test_train_and_test_classlabels_must_name_the_same_classes(tmp_path):
    write_images(tmp_path / "train.parquet", [0, 1, 2])
    write_images(tmp_path / "test.parquet", [0], label_feature=datasets.ClassLabel(names=["d", "c", "b", "a"]))
    with pytest.raises(ValueError, match="test split's ClassLabel column 'label' names the classes"):
        load_image_classification(str(tmp_path), val_size=1)


def test_a_test_split_without_the_label_column_is_an_error(tmp_path):
    write_images(tmp_path / "train.parquet", [0, 1, 2])
    write(tmp_path / "test.parquet", {"img": [row_image(0)]}, {"img": datasets.Image()})
    with pytest.raises(ValueError, match="the test split of .* has no label column 'label'"):
        load_image_classification(str(tmp_path), val_size=1)


# --- images ------------------------------------------------------------------------------------------------------

def test_rgba_grayscale_and_palette_images_are_converted_to_rgb(tmp_path):
    rgba = encoded(np.full((4, 4, 4), (10, 20, 30, 128), dtype=np.uint8))
    gray = encoded(np.full((4, 4), 7, dtype=np.uint8))
    palette = Image.fromarray(np.full((4, 4, 3), (40, 50, 60), dtype=np.uint8)).quantize(2)
    out = io.BytesIO()
    palette.save(out, "PNG")
    images = [row_image(0), rgba, gray, {"bytes": out.getvalue(), "path": None}]
    data = load_image_classification(image_folder(tmp_path, [0, 1, 2, 3], images=images), val_size=1)
    everything = torch.cat([data.train.images, data.validation.images])[
        torch.cat([data.train.labels, data.validation.labels]).argsort()]
    assert everything.shape == (4, 3, 4, 4) and everything.dtype == torch.uint8
    assert everything[:, :, 0, 0].tolist() == [[0, 0, 9], [10, 20, 30], [7, 7, 7], [40, 50, 60]]


def test_one_mean_value_gives_grayscale_images(tmp_path):
    gray = encoded(np.full((4, 4), 7, dtype=np.uint8))
    folder = image_folder(tmp_path, [0, 1, 2], images=[gray, gray, row_image(5)])
    data = load_image_classification(folder, val_size=1, mean=(0.5,), std=(0.25,))
    assert data.train.images.shape[1:] == (1, 4, 4) and data.example_inputs(1).shape == (1, 1, 4, 4)


@pytest.mark.parametrize("mean, std, match", [
    ((0.5, 0.5), (0.2, 0.2), "images decode to 1 \\(grayscale\\), 3 \\(RGB\\) or 4"),
    ((0.5, 0.5, 0.5), (0.2, 0.2), "one value per image channel"),
    ((0.5, 0.5, 0.5), (0.2, 0.0, 0.2), "std all positive"),
])
def test_mean_and_std_must_fit_the_channels(tmp_path, mean, std, match):
    with pytest.raises(ValueError, match=match):
        load_image_classification(image_folder(tmp_path, [0, 1, 2]), val_size=1, mean=mean, std=std)


def test_corrupt_image_bytes_name_split_column_and_row(tmp_path):
    images = [row_image(0), row_image(1), {"bytes": b"not a png", "path": None}, row_image(3)]
    write_images(tmp_path / "train.parquet", [0, 1, 2, 3])
    write_images(tmp_path / "test.parquet", [0, 1, 2, 3], images=images)
    with pytest.raises(ValueError, match=r"test split, column 'img', row 2 .*cannot decode the image "
                                         r"\(UnidentifiedImageError"):
        load_image_classification(str(tmp_path), val_size=1)


def test_a_missing_image_names_its_row(tmp_path):
    folder = image_folder(tmp_path, [0, 1, 2], images=[row_image(0), None, row_image(2)])
    with pytest.raises(ValueError, match=r"train split, column 'img', row 1 .*the image is missing \(null\)"):
        load_image_classification(folder, val_size=1)


def test_images_of_different_sizes_name_the_first_odd_row(tmp_path):
    big = encoded(np.zeros((5, 5, 3), dtype=np.uint8))
    folder = image_folder(tmp_path, [0, 1, 2], images=[row_image(0), row_image(1), big])
    with pytest.raises(ValueError, match=r"train split, column 'img', row 2 .*image of shape \(5, 5, 3\), but row 0 "
                                         r"has \(4, 4, 3\)"):
        load_image_classification(folder, val_size=1)


def test_plain_binary_images_without_hub_metadata_are_decoded(tmp_path):
    write(tmp_path / "train.parquet", {"image": pa.array([png(np.full((4, 4, 3), r, np.uint8)) for r in range(3)]),
                                       "label": [2, 0, 1]})
    data = load_image_classification(str(tmp_path), val_size=1)
    everything = torch.cat([data.train.images, data.validation.images])
    labels = torch.cat([data.train.labels, data.validation.labels])
    assert {(int(i[0, 0, 0]), int(y)) for i, y in zip(everything, labels)} == {(0, 2), (1, 0), (2, 1)}
    assert data.num_classes == 3 and data.class_names is None


def test_pixel_arrays_with_the_wrong_channel_count_are_an_error(tmp_path):
    features = datasets.Features({"pixel_values": datasets.Array3D((4, 4, 3), "uint8"),
                                  "label": datasets.Value("int64")})
    datasets.Dataset.from_dict({"pixel_values": np.zeros((3, 4, 4, 3), np.uint8), "label": [0, 1, 0]},
                               features=features).to_parquet(str(tmp_path / "train.parquet"))
    with pytest.raises(ValueError, match="images have 3 channels, but mean/std have 1 values"):
        load_image_classification(str(tmp_path), val_size=1, mean=(0.5,), std=(0.2,))
    data = load_image_classification(str(tmp_path), val_size=1)
    assert data.train.images.shape == (2, 3, 4, 4) and data.train.images.dtype == torch.uint8


def test_pixel_arrays_are_taken_as_they_are_and_must_be_0_to_255(tmp_path):
    pixels = np.arange(3 * 4 * 4, dtype=np.int64).reshape(3, 4, 4) * 5  # grayscale H x W, stored as int64 lists
    write(tmp_path / "ok" / "train.parquet", {"pixel_values": pixels.tolist(), "label": [0, 1, 2]})
    data = load_image_classification(str(tmp_path / "ok"), val_size=1, mean=(0.5,), std=(0.2,))
    everything = torch.cat([data.train.images, data.validation.images])
    order = torch.cat([data.train.labels, data.validation.labels]).tolist()
    assert torch.equal(everything[:, 0], torch.from_numpy(pixels[order]).to(torch.uint8))
    write(tmp_path / "bad" / "train.parquet", {"pixel_values": (pixels + 100).tolist(), "label": [0, 1, 2]})
    with pytest.raises(TypeError, match=r"train split, column 'pixel_values': images are int64 arrays of shape "
                                        r"\(4, 4\); expected .* arrays of pixels in 0..255"):
        load_image_classification(str(tmp_path / "bad"), val_size=1, mean=(0.5,), std=(0.2,))


# --- arguments ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, match", [
    ({"max_train_samples": 0}, ValueError, "max_train_samples=0: must be a positive int"),
    ({"max_train_samples": -5}, ValueError, "max_train_samples=-5: must be a positive int"),
    ({"max_test_samples": 0}, ValueError, "max_test_samples=0: must be a positive int"),
    ({"max_train_samples": 2.5}, TypeError, "max_train_samples must be a positive int or None"),
    ({"max_test_samples": True}, TypeError, "max_test_samples must be a positive int or None"),
    ({"val_size": 1.5}, ValueError, "val_size=1.5: a float val_size is a fraction"),
    ({"val_size": 0.0}, ValueError, "val_size=0.0: a float val_size is a fraction"),
    ({"val_size": float("nan")}, ValueError, "val_size=nan: a float val_size is a fraction"),
    ({"val_size": "2"}, TypeError, "val_size must be an int"),
    ({"val_size": True}, TypeError, "val_size must be an int"),
    ({"val_size": 0}, ValueError, "val_size=0 leaves no training or no validation examples"),
    ({"val_size": 4}, ValueError, "val_size=4 leaves no training or no validation examples"),
])
@pytest.mark.parametrize("loader", ["image", "text"])
def test_bad_sizes_are_refused(tmp_path, kwargs, error, match, loader):
    if loader == "image":
        with pytest.raises(error, match=match):
            load_image_classification(image_folder(tmp_path, [0, 1, 2, 3]), **{"val_size": 1, **kwargs})
    else:
        folder = text_folder(tmp_path, {"text": TEXTS[:4], "label": [0, 1, 0, 1]})
        with pytest.raises(error, match=match):
            load_text_classification(folder, **{"val_size": 1, **kwargs})


def test_numpy_sizes_are_accepted(tmp_path):
    data = load_image_classification(image_folder(tmp_path, [0, 1, 2, 3]), val_size=np.int64(1),
                                     max_train_samples=np.int64(3))
    assert (len(data.train), len(data.validation)) == (2, 1)


# --- texts -------------------------------------------------------------------------------------------------------

def test_sharded_text_with_string_labels(tmp_path):
    write(tmp_path / "train-00000-of-00002.parquet", {"text": TEXTS[:4], "label": ["q", "p", "q", "r"]})
    write(tmp_path / "train-00001-of-00002.parquet", {"text": TEXTS[4:], "label": ["p", "p", "r", "q"]})
    write(tmp_path / "test-00000-of-00001.parquet", {"text": TEXTS[:2], "label": ["r", "p"]})
    data = load_text_classification(str(tmp_path), val_size=2, vocab_size=100)
    assert (len(data.train), len(data.validation), len(data.test)) == (6, 2, 2)
    assert data.class_names == ("p", "q", "r") and data.num_classes == 3
    assert sorted(torch.cat([data.train.labels, data.validation.labels]).tolist()) == [0, 0, 0, 1, 1, 1, 2, 2]
    assert data.test.labels.tolist() == [2, 0]


def test_a_null_text_names_split_column_and_row(tmp_path):
    folder = text_folder(tmp_path, {"text": TEXTS[:4], "label": [0, 1, 0, 1]},
                         {"text": ["fine", None], "label": [0, 1]})
    with pytest.raises(ValueError, match=r"test split, column 'text', row 1 .*the text is missing \(null\)"):
        load_text_classification(folder, val_size=1, vocab_size=100)


def test_a_non_text_column_is_a_type_error(tmp_path):
    folder = text_folder(tmp_path, {"text": [1, 2, 3], "label": [0, 1, 0]})
    with pytest.raises(TypeError, match="train split, column 'text' holds int64; expected text"):
        load_text_classification(folder, val_size=1, vocab_size=100)


def test_text_labels_are_checked_like_image_labels(tmp_path):
    folder = text_folder(tmp_path, {"text": TEXTS[:4], "label": [0, 1, 0, 1]}, {"text": TEXTS[:2], "label": [1, 2]})
    with pytest.raises(ValueError, match=r"test split, column 'label', row 1 .*label 2 is a class never seen"):
        load_text_classification(folder, val_size=1, vocab_size=100)


def test_an_empty_text_split_is_an_error(tmp_path):
    folder = text_folder(tmp_path, {"text": pa.array([], pa.string()), "label": pa.array([], pa.int64())})
    with pytest.raises(ValueError, match="the train split has no rows"):
        load_text_classification(folder, val_size=1)
