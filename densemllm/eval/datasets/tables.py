"""Dataset facts as plain data, one table per dataset (the way mmsegmentation's dataset
classes and configs state them). Nothing here runs: the readers in this package read
these tables, and ``densemllm.eval.datasets.REGISTRY`` maps each dataset name to one.

A table holds:
- ``name``: the registry name; ``task``: "segment" | "depth" | "refer";
- ``reader``: which reader function lays the table over the files ("seg_dir",
  "nyu", "cityscapes_depth", "ddad", "refcoco");
- ``layout``: folders and file suffixes relative to the data root (``{split}`` is
  replaced by the split); ``root_names``: folder names the data root may also point
  above (``data/ade`` or ``data/ade/ADEChallengeData2016`` both work);
- ``splits`` and ``default_split``;
- segmentation: ``classes`` (label i = classes[i], after ``reduce_zero_label``),
  ``palette`` (one RGB per class), ``ignore_index`` (255), ``reduce_zero_label``
  (label 0 -> ignore, label k -> k - 1, as mmseg's LoadAnnotations);
- depth: ``depth_scale`` (file value -> metres), ``min_depth_eval``/``max_depth_eval``
  and ``eval_crop`` (mmseg DepthMetric's arguments);
- ``paper``: split -> the DenseMLLM-4B numbers of the paper's Table 1, in the unit our
  metrics use (mIoU in percent, delta1 and cIoU as fractions).

Class names are mmsegmentation's, in its order; ADE20K's ``'bed '`` carries a stray
space in mmseg, which is stripped here (prompts use the stripped name, as the paper's).
"""

ADE20K = dict(
    name="ade20k", task="segment", reader="seg_dir",
    root_names=("ADEChallengeData2016",),
    layout=dict(img_dir="images/{split}", ann_dir="annotations/{split}", img_suffix=".jpg",
                seg_suffix=".png", split_file=None),
    splits=("validation", "training"), default_split="validation",
    ignore_index=255, reduce_zero_label=True,
    paper={"validation": {"mIoU": 54.2}},
    classes=(
        'wall', 'building', 'sky', 'floor', 'tree', 'ceiling', 'road', 'bed', 'windowpane', 'grass',
        'cabinet', 'sidewalk', 'person', 'earth', 'door', 'table', 'mountain', 'plant', 'curtain',
        'chair', 'car', 'water', 'painting', 'sofa', 'shelf', 'house', 'sea', 'mirror', 'rug', 'field',
        'armchair', 'seat', 'fence', 'desk', 'rock', 'wardrobe', 'lamp', 'bathtub', 'railing', 'cushion',
        'base', 'box', 'column', 'signboard', 'chest of drawers', 'counter', 'sand', 'sink', 'skyscraper',
        'fireplace', 'refrigerator', 'grandstand', 'path', 'stairs', 'runway', 'case', 'pool table',
        'pillow', 'screen door', 'stairway', 'river', 'bridge', 'bookcase', 'blind', 'coffee table',
        'toilet', 'flower', 'book', 'hill', 'bench', 'countertop', 'stove', 'palm', 'kitchen island',
        'computer', 'swivel chair', 'boat', 'bar', 'arcade machine', 'hovel', 'bus', 'towel', 'light',
        'truck', 'tower', 'chandelier', 'awning', 'streetlight', 'booth', 'television receiver',
        'airplane', 'dirt track', 'apparel', 'pole', 'land', 'bannister', 'escalator', 'ottoman',
        'bottle', 'buffet', 'poster', 'stage', 'van', 'ship', 'fountain', 'conveyer belt', 'canopy',
        'washer', 'plaything', 'swimming pool', 'stool', 'barrel', 'basket', 'waterfall', 'tent', 'bag',
        'minibike', 'cradle', 'oven', 'ball', 'food', 'step', 'tank', 'trade name', 'microwave', 'pot',
        'animal', 'bicycle', 'lake', 'dishwasher', 'screen', 'blanket', 'sculpture', 'hood', 'sconce',
        'vase', 'traffic light', 'tray', 'ashcan', 'fan', 'pier', 'crt screen', 'plate', 'monitor',
        'bulletin board', 'shower', 'radiator', 'glass', 'clock', 'flag'),
    palette=(
        (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80),
        (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7),
        (150, 5, 61), (120, 120, 70), (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4),
        (255, 51, 7), (204, 70, 3), (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255),
        (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92), (112, 9, 255),
        (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10), (7, 255, 255),
        (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20),
        (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255),
        (140, 140, 140), (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0),
        (153, 255, 0), (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255),
        (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255), (0, 255, 112), (0, 255, 133),
        (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0), (0, 143, 255), (51, 255, 0),
        (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0), (0, 255, 153),
        (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20),
        (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194),
        (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255),
        (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255),
        (163, 255, 0), (255, 235, 0), (8, 184, 170), (133, 0, 255), (0, 255, 92), (184, 0, 255),
        (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112), (92, 255, 0), (0, 224, 255),
        (112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0), (255, 0, 163),
        (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235), (245, 0, 255),
        (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255),
        (255, 255, 0), (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255), (41, 255, 0),
        (173, 0, 255), (0, 245, 255), (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255),
        (184, 255, 0), (0, 133, 255), (255, 214, 0), (25, 194, 194), (102, 255, 0), (92, 0, 255)),
)

# COCO-Stuff 164k: labelTrainIds 0..170, 255 ignore (no zero reduction).
COCO_STUFF164K = dict(
    name="coco_stuff164k", task="segment", reader="seg_dir",
    root_names=("coco_stuff164k",),
    layout=dict(img_dir="images/{split}", ann_dir="annotations/{split}", img_suffix=".jpg",
                seg_suffix="_labelTrainIds.png", split_file=None),
    splits=("val2017", "train2017"), default_split="val2017",
    ignore_index=255, reduce_zero_label=False,
    paper={"val2017": {"mIoU": 52.2}},
    classes=(
        'person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train', 'truck', 'boat',
        'traffic light', 'fire hydrant', 'stop sign', 'parking meter', 'bench', 'bird', 'cat', 'dog',
        'horse', 'sheep', 'cow', 'elephant', 'bear', 'zebra', 'giraffe', 'backpack', 'umbrella',
        'handbag', 'tie', 'suitcase', 'frisbee', 'skis', 'snowboard', 'sports ball', 'kite',
        'baseball bat', 'baseball glove', 'skateboard', 'surfboard', 'tennis racket', 'bottle',
        'wine glass', 'cup', 'fork', 'knife', 'spoon', 'bowl', 'banana', 'apple', 'sandwich', 'orange',
        'broccoli', 'carrot', 'hot dog', 'pizza', 'donut', 'cake', 'chair', 'couch', 'potted plant',
        'bed', 'dining table', 'toilet', 'tv', 'laptop', 'mouse', 'remote', 'keyboard', 'cell phone',
        'microwave', 'oven', 'toaster', 'sink', 'refrigerator', 'book', 'clock', 'vase', 'scissors',
        'teddy bear', 'hair drier', 'toothbrush', 'banner', 'blanket', 'branch', 'bridge',
        'building-other', 'bush', 'cabinet', 'cage', 'cardboard', 'carpet', 'ceiling-other',
        'ceiling-tile', 'cloth', 'clothes', 'clouds', 'counter', 'cupboard', 'curtain', 'desk-stuff',
        'dirt', 'door-stuff', 'fence', 'floor-marble', 'floor-other', 'floor-stone', 'floor-tile',
        'floor-wood', 'flower', 'fog', 'food-other', 'fruit', 'furniture-other', 'grass', 'gravel',
        'ground-other', 'hill', 'house', 'leaves', 'light', 'mat', 'metal', 'mirror-stuff', 'moss',
        'mountain', 'mud', 'napkin', 'net', 'paper', 'pavement', 'pillow', 'plant-other', 'plastic',
        'platform', 'playingfield', 'railing', 'railroad', 'river', 'road', 'rock', 'roof', 'rug',
        'salad', 'sand', 'sea', 'shelf', 'sky-other', 'skyscraper', 'snow', 'solid-other', 'stairs',
        'stone', 'straw', 'structural-other', 'table', 'tent', 'textile-other', 'towel', 'tree',
        'vegetable', 'wall-brick', 'wall-concrete', 'wall-other', 'wall-panel', 'wall-stone',
        'wall-tile', 'wall-wood', 'water-other', 'waterdrops', 'window-blind', 'window-other', 'wood'),
    palette=(
        (0, 192, 64), (0, 192, 64), (0, 64, 96), (128, 192, 192), (0, 64, 64), (0, 192, 224),
        (0, 192, 192), (128, 192, 64), (0, 192, 96), (128, 192, 64), (128, 32, 192), (0, 0, 224),
        (0, 0, 64), (0, 160, 192), (128, 0, 96), (128, 0, 192), (0, 32, 192), (128, 128, 224),
        (0, 0, 192), (128, 160, 192), (128, 128, 0), (128, 0, 32), (128, 32, 0), (128, 0, 128),
        (64, 128, 32), (0, 160, 0), (0, 0, 0), (192, 128, 160), (0, 32, 0), (0, 128, 128),
        (64, 128, 160), (128, 160, 0), (0, 128, 0), (192, 128, 32), (128, 96, 128), (0, 0, 128),
        (64, 0, 32), (0, 224, 128), (128, 0, 0), (192, 0, 160), (0, 96, 128), (128, 128, 128),
        (64, 0, 160), (128, 224, 128), (128, 128, 64), (192, 0, 32), (128, 96, 0), (128, 0, 192),
        (0, 128, 32), (64, 224, 0), (0, 0, 64), (128, 128, 160), (64, 96, 0), (0, 128, 192),
        (0, 128, 160), (192, 224, 0), (0, 128, 64), (128, 128, 32), (192, 32, 128), (0, 64, 192),
        (0, 0, 32), (64, 160, 128), (128, 64, 64), (128, 0, 160), (64, 32, 128), (128, 192, 192),
        (0, 0, 160), (192, 160, 128), (128, 192, 0), (128, 0, 96), (192, 32, 0), (128, 64, 128),
        (64, 128, 96), (64, 160, 0), (0, 64, 0), (192, 128, 224), (64, 32, 0), (0, 192, 128),
        (64, 128, 224), (192, 160, 0), (0, 192, 0), (192, 128, 96), (192, 96, 128), (0, 64, 128),
        (64, 0, 96), (64, 224, 128), (128, 64, 0), (192, 0, 224), (64, 96, 128), (128, 192, 128),
        (64, 0, 224), (192, 224, 128), (128, 192, 64), (192, 0, 96), (192, 96, 0), (128, 64, 192),
        (0, 128, 96), (0, 224, 0), (64, 64, 64), (128, 128, 224), (0, 96, 0), (64, 192, 192),
        (0, 128, 224), (128, 224, 0), (64, 192, 64), (128, 128, 96), (128, 32, 128), (64, 0, 192),
        (0, 64, 96), (0, 160, 128), (192, 0, 64), (128, 64, 224), (0, 32, 128), (192, 128, 192),
        (0, 64, 224), (128, 160, 128), (192, 128, 0), (128, 64, 32), (128, 32, 64), (192, 0, 128),
        (64, 192, 32), (0, 160, 64), (64, 0, 0), (192, 192, 160), (0, 32, 64), (64, 128, 128),
        (64, 192, 160), (128, 160, 64), (64, 128, 0), (192, 192, 32), (128, 96, 192), (64, 0, 128),
        (64, 64, 32), (0, 224, 192), (192, 0, 0), (192, 64, 160), (0, 96, 192), (192, 128, 128),
        (64, 64, 160), (128, 224, 192), (192, 128, 64), (192, 64, 32), (128, 96, 64), (192, 0, 192),
        (0, 192, 32), (64, 224, 64), (64, 0, 64), (128, 192, 160), (64, 96, 64), (64, 128, 192),
        (0, 192, 160), (192, 224, 64), (64, 128, 64), (128, 192, 32), (192, 32, 192), (64, 64, 192),
        (0, 64, 32), (64, 160, 192), (192, 64, 64), (128, 64, 160), (64, 32, 192), (192, 192, 192),
        (0, 64, 160), (192, 160, 192), (192, 192, 0), (128, 64, 96), (192, 32, 64), (192, 64, 128),
        (64, 192, 96), (64, 160, 64), (64, 64, 0)),
)

# Pascal Context 59 (mmseg PascalContextDataset59): 0 = background -> ignored.
PASCAL_CONTEXT59 = dict(
    name="pascal_context59", task="segment", reader="seg_dir",
    root_names=("VOCdevkit/VOC2010", "VOC2010"),
    layout=dict(img_dir="JPEGImages", ann_dir="SegmentationClassContext", img_suffix=".jpg",
                seg_suffix=".png", split_file="ImageSets/SegmentationContext/{split}.txt"),
    splits=("val", "train"), default_split="val",
    ignore_index=255, reduce_zero_label=True,
    paper={"val": {"mIoU": 60.4}},
    classes=(
        'aeroplane', 'bag', 'bed', 'bedclothes', 'bench', 'bicycle', 'bird', 'boat', 'book', 'bottle',
        'building', 'bus', 'cabinet', 'car', 'cat', 'ceiling', 'chair', 'cloth', 'computer', 'cow',
        'cup', 'curtain', 'dog', 'door', 'fence', 'floor', 'flower', 'food', 'grass', 'ground', 'horse',
        'keyboard', 'light', 'motorbike', 'mountain', 'mouse', 'person', 'plate', 'platform',
        'pottedplant', 'road', 'rock', 'sheep', 'shelves', 'sidewalk', 'sign', 'sky', 'snow', 'sofa',
        'table', 'track', 'train', 'tree', 'truck', 'tvmonitor', 'wall', 'water', 'window', 'wood'),
    palette=(
        (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80), (140, 140, 140),
        (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7), (150, 5, 61),
        (120, 120, 70), (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4), (255, 51, 7),
        (204, 70, 3), (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255), (255, 7, 71),
        (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92), (112, 9, 255), (8, 255, 214),
        (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10), (7, 255, 255), (224, 255, 8),
        (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20), (255, 8, 41),
        (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255), (140, 140, 140),
        (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0), (153, 255, 0),
        (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255)),
)

# Pascal VOC 2012 without its background: mmseg's PascalVOCDataset classes[1:], with
# label 0 (background) reduced to the ignore index; 255 (object borders) stays ignored.
VOC20 = dict(
    name="voc20", task="segment", reader="seg_dir",
    root_names=("VOCdevkit/VOC2012", "VOC2012"),
    layout=dict(img_dir="JPEGImages", ann_dir="SegmentationClass", img_suffix=".jpg",
                seg_suffix=".png", split_file="ImageSets/Segmentation/{split}.txt"),
    splits=("val", "train", "trainval"), default_split="val",
    ignore_index=255, reduce_zero_label=True,
    paper={"val": {"mIoU": 92.5}},
    classes=(
        'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair', 'cow',
        'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant', 'sheep', 'sofa', 'train',
        'tvmonitor'),
    palette=(
        (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128), (128, 0, 128), (0, 128, 128),
        (128, 128, 128), (64, 0, 0), (192, 0, 0), (64, 128, 0), (192, 128, 0), (64, 0, 128),
        (192, 0, 128), (64, 128, 128), (192, 128, 128), (0, 64, 0), (128, 64, 0), (0, 192, 0),
        (128, 192, 0), (0, 64, 128)),
)

# Cityscapes: images and labels sit in one folder per city.
CITYSCAPES = dict(
    name="cityscapes", task="segment", reader="seg_dir",
    root_names=("cityscapes",),
    layout=dict(img_dir="leftImg8bit/{split}", ann_dir="gtFine/{split}", img_suffix="_leftImg8bit.png",
                seg_suffix="_gtFine_labelTrainIds.png", split_file=None),
    splits=("val", "train"), default_split="val",
    ignore_index=255, reduce_zero_label=False,
    paper={"val": {"mIoU": 70.4}},
    classes=(
        'road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light', 'traffic sign',
        'vegetation', 'terrain', 'sky', 'person', 'rider', 'car', 'truck', 'bus', 'train', 'motorcycle',
        'bicycle'),
    palette=(
        (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
        (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
        (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32)),
)

# NYUv2 in mmseg's `nyu` layout: 16-bit PNG depth in millimetres, 0 = invalid. mmseg's
# config evaluates DepthMetric(max_depth_eval=10) with the NYU crop [45:471, 41:601].
NYUV2 = dict(
    name="nyuv2", task="depth", reader="nyu",
    root_names=("nyu",),
    layout=dict(img_dir="images/{split}", ann_dir="annotations/{split}", img_suffix=".jpg",
                depth_suffix=".png"),
    splits=("test", "train"), default_split="test",
    depth_scale=1e-3, min_depth_eval=0.0, max_depth_eval=10.0,
    eval_crop=dict(kind="nyu", rows=(45, 471), cols=(41, 601)),
    paper={"test": {"d1": 0.904}},
)

# Cityscapes depth from the stereo disparity: d = baseline * fx / disparity with
# disparity = (p - 1) / 256 for p > 0 (p = 0 invalid), camera from the per-image JSON.
# Invalid border: the paper marks "the left and bottom parts" invalid "following previous
# works" without the amounts: the bottom 25 % (the ego car, ManyDepth's crop) and the left
# 128 / 2048 of the width (where stereo matching has no partner), both parameters here.
CITYSCAPES_DEPTH = dict(
    name="cityscapes_depth", task="depth", reader="cityscapes_depth",
    root_names=("cityscapes",),
    layout=dict(img_dir="leftImg8bit/{split}", disparity_dir="disparity/{split}",
                camera_dir="camera/{split}", img_suffix="_leftImg8bit.png",
                disparity_suffix="_disparity.png", camera_suffix="_camera.json"),
    splits=("val", "train", "test"), default_split="val",
    min_depth_eval=1e-3, max_depth_eval=80.0,
    eval_crop=dict(kind="border", left_frac=128 / 2048, bottom_frac=0.25),
    paper={"val": {"d1": 0.927}},
)

# DDAD, a simple documented layout (the official release is a DGP JSON scene format):
#   ddad/{split}/rgb/<id>.png|.jpg  and  ddad/{split}/depth/<id>.png (uint16, metres x 256,
#   0 = invalid; the KITTI convention) or <id>.npy (float metres, 0 / non-finite invalid).
DDAD = dict(
    name="ddad", task="depth", reader="ddad",
    root_names=("ddad",),
    layout=dict(img_dir="{split}/rgb", ann_dir="{split}/depth", img_suffixes=(".png", ".jpg"),
                depth_suffixes=(".png", ".npy"), png_depth_scale=1 / 256),
    splits=("val",), default_split="val",
    min_depth_eval=0.05, max_depth_eval=120.0, eval_crop=None,
    paper={"val": {"d1": 0.876}},
)

# RefCOCO family in the `refer` toolkit layout: {root}/{dataset}/refs({split_by}).p +
# instances.json; images {root}/images/mscoco/images/train2014/COCO_train2014_<id:012d>.jpg
# (or {root}/train2014/...). One sample per sentence.
_REF_LAYOUT = dict(refs_file="{dataset}/refs({split_by}).p", instances="{dataset}/instances.json",
                   image_dirs=("images/mscoco/images/train2014", "images/train2014", "train2014"),
                   image_name="COCO_train2014_{image_id:012d}.jpg")
REFCOCO = dict(name="refcoco", task="refer", reader="refcoco", folder="refcoco", root_names=(),
               layout=_REF_LAYOUT, split_by="unc", splits=("val", "testA", "testB", "train"),
               default_split="val",
               paper={"val": {"cIoU": 0.807}, "testA": {"cIoU": 0.820}, "testB": {"cIoU": 0.784}})
REFCOCO_PLUS = dict(name="refcoco+", task="refer", reader="refcoco", folder="refcoco+", root_names=(),
                    layout=_REF_LAYOUT, split_by="unc", splits=("val", "testA", "testB", "train"),
                    default_split="val",
                    paper={"val": {"cIoU": 0.762}, "testA": {"cIoU": 0.796}, "testB": {"cIoU": 0.714}})
REFCOCOG = dict(name="refcocog", task="refer", reader="refcoco", folder="refcocog", root_names=(),
                layout=_REF_LAYOUT, split_by="umd", splits=("val", "test", "train"),
                default_split="val", paper={"val": {"cIoU": 0.765}, "test": {"cIoU": 0.766}})

ALL = (ADE20K, COCO_STUFF164K, PASCAL_CONTEXT59, VOC20, CITYSCAPES, NYUV2, CITYSCAPES_DEPTH, DDAD,
       REFCOCO, REFCOCO_PLUS, REFCOCOG)
