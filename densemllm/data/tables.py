"""The procedural scenes' dataset facts as plain data tables (mmsegmentation style):
class names and order, palette, ignore rules, the object attributes referring
expressions name, the depth range, and the camera ranges the generator samples.
Everything else (generator, writer, reader, training) reads these tables."""

# Label i of the label maps = CLASSES[i]. 0-2 are the layout, 3.. the object shapes.
CLASSES = ("sky", "wall", "ground", "circle", "square", "triangle", "diamond", "star")
LAYOUT_CLASSES = CLASSES[:3]
SHAPES = CLASSES[3:]

# Colour of each class in label pictures (RGB), same order as CLASSES.
PALETTE = (
    (70, 130, 180),   # sky
    (190, 153, 153),  # wall
    (152, 251, 152),  # ground
    (220, 20, 60),    # circle
    (0, 0, 142),      # square
    (250, 170, 30),   # triangle
    (119, 11, 32),    # diamond
    (107, 142, 35),   # star
)

# Ignore rules: label PNGs hold class indices; IGNORE_INDEX marks unlabelled pixels
# (the generator labels every pixel, so it never writes it; readers and metrics honour
# it). Labels start at 0 (sky is a real class): no reduce_zero_label.
IGNORE_INDEX = 255
REDUCE_ZERO_LABEL = False

# Object colours by name (what referring expressions say) -> base RGB.
COLOURS = {
    "red": (210, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 70, 210),
    "yellow": (235, 205, 40),
    "purple": (140, 60, 180),
    "orange": (240, 135, 30),
    "white": (235, 235, 235),
    "black": (35, 35, 35),
}

# Object surface textures -> the adjective referring expressions use.
TEXTURES = {"plain": "plain", "hstripes": "striped", "vstripes": "striped", "checker": "checkered",
            "dots": "dotted"}

# Depth maps: metres (float) in memory, millimetres (uint16 PNG, 0 = invalid) on disk.
# Every valid depth lies inside (0, DEPTH_MAX_M): the wall closes the scene.
# The model's depth prompt names DEPTH_DATASET and its bins map linearly onto
# [DEPTH_MIN_M, DEPTH_MAX_M] (densemllm.tasks.depth.RANGES holds the same entry).
DEPTH_DATASET = "Scenes"
DEPTH_MIN_M = 0.0
DEPTH_MAX_M = 10.0
DEPTH_PNG_SCALE = 1000.0  # PNG value = round(metres * 1000)

# Camera and layout ranges the generator samples uniformly (docs/default-model.md).
CAMERA = {
    "focal_per_width": (0.9, 1.3),   # focal length in pixels = this * image width
    "horizon_row": (0.22, 0.48),     # horizon (principal point row) as a fraction of the height
    "camera_height_m": (1.0, 1.6),   # camera centre above the ground plane
    "wall_depth_m": (4.0, 9.5),      # distance of the fronto-parallel back wall
    "wall_height_above_camera_m": (0.2, 3.0),
    "max_ground_start": 0.85,        # the wall's base row stays above this fraction of the height
}

# Objects: count per scene, metric size (height of the bounding square), standing depth,
# pixel-size bounds (relative to min(H, W); rejection-sampled), and the referring rules.
OBJECTS = {
    "count": (2, 6),
    "size_m": (0.35, 1.3),
    "min_depth_m": 1.3,
    "wall_gap_m": 0.3,
    "size_px": (0.14, 0.45),
    "present_px": 12,          # visible pixels for an object to count as present (ambiguity checks)
    "referable_px": 0.008,     # visible area (fraction of the image) for an object to be referred to
    "referable_visible": 0.5,  # share of its own drawn area that must stay visible
    "size_ratio": 1.5,         # "largest"/"smallest": the winner's area vs the runner-up's
    "side_gap": 0.15,          # "on the left/right": centroid gap as a fraction of the width
    "depth_gap_m": 1.0,        # "nearest"/"farthest": depth gap to the runner-up
}
