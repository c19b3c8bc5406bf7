"""Default training config: IRN's recipe (spec sections 3.6 and 3.7) for IRN x4 on DIV2K; every field commented.

Variants (``irn_x2.py``, ``irrm_m_x4.py``, ...) import this file and change only what differs. Command::

    python train.py --config configs/default.py --workdir runs/irn_x4 --config.data.root /data/sr

Expected time and PSNR: see the variant files (``irn_x4.py`` is this recipe).
"""

import ml_collections
from ml_collections import config_dict

PAPER_STEPS = 500_000


def get_config() -> ml_collections.ConfigDict:
    """The default config (IRN x4, DIV2K, 500k steps)."""
    config = ml_collections.ConfigDict()

    # The network: irrm_jax.models.build_model(name, scale, compute_dtype, **overrides).
    config.model = ml_collections.ConfigDict()
    config.model.name = "irn"  # 'irn', 'irrm_s', 'irrm_m' or 'irrm_l'
    config.model.scale = 4  # 2 or 4 (IRN also 8)
    # Sub-network convolutions in 'float32' or 'bfloat16'; parameters, optimiser and coupling arithmetic
    # always stay float32.
    config.model.compute_dtype = "float32"
    # Speed options of build_model (same function and parameters): pad sub-network channels to a multiple of
    # this (8: IRN x4's step 1.32x faster on an H200, as cuDNN no longer pads every odd-channel tensor itself;
    # within 3% on CPU), evaluate each coupling's G and H sub-networks together, and let DenseBlocks convolve
    # each new feature map once into all later convolutions (benchmarks/NOTES.md has the measurements).
    config.model.channel_multiple = 8
    config.model.fuse_gh = False
    config.model.dense_outward = False
    # The sub-networks (IRN's DenseBlocks, IRRM's Enhanced Blocks) as Pallas GPU kernels (irrm_jax.dense_kernels,
    # enhanced_kernels; Triton on GPUs, an interpreter elsewhere); dense_cuda: the same with the kernels in CUDA
    # (irrm_jax.cuda_kernels; NVIDIA GPUs, nvcc). With dense_cuda set fuse_gh too: G and H then run as one call of
    # each kernel (IRN x4 step on an H100 10% faster in bfloat16).
    config.model.dense_pallas = False
    config.model.dense_cuda = False
    # irrm_jax.models.RescalerConfig fields that replace the variant's; None keeps the variant's value.
    # E.g. --config.model.overrides.blocks_per_level="(1, 1)" --config.model.overrides.nf=8 for a tiny model.
    config.model.overrides = ml_collections.ConfigDict(
        {
            "blocks_per_level": config_dict.placeholder(tuple),  # coupling blocks per Haar level
            "subnet": config_dict.placeholder(str),  # 'dense' (IRN) or 'eb' (IRRM)
            "nf": config_dict.placeholder(int),  # sub-network width
            "n_res": config_dict.placeholder(int),  # residual units per Enhanced Block
            "haar_mode": config_dict.placeholder(str),  # 'per_level' or 'upfront'
            "rdms_per_level": config_dict.placeholder(int),  # Residual Downscaling Modules per level
            "long_skip": config_dict.placeholder(str),  # 'implicit' or 'explicit'
            "clamp": config_dict.placeholder(float),  # bound of the affine log-scale
        }
    )

    # Data. A source is a comma-separated list of dataset names of irrm_jax.datasets ('div2k', 't91', 'bsd200',
    # 'set5', ..., found under `root`), folders of images (any folder of PNG/JPEG/BMP photos), or 'synthetic'.
    config.data = ml_collections.ConfigDict()
    config.data.train = "div2k"  # DIV2K's 800 training images: <root>/DIV2K_train_HR
    config.data.train_split = "train"
    config.data.validation = "set5"  # '' disables validation
    config.data.validation_split = config_dict.placeholder(str)  # None: the dataset's only split
    config.data.max_validation_images = 0  # 0: all
    config.data.validation_max_size = 0  # centre-crop validation images to at most this side; 0: whole images
    config.data.root = ""  # folder holding DIV2K_train_HR/, Set5/HR/, ... for named datasets
    config.data.data_dir = ""  # tfds cache of prepared datasets; '' is tfds's default (~/tensorflow_datasets)
    config.data.patch_size = 144  # HR patch side (LR: 72 at x2, 36 at x4)
    config.data.batch_size = 16  # global batch (all devices together); must divide by the device count
    config.data.in_memory = config_dict.placeholder(bool)  # keep decoded images in RAM; None: when they fit
    config.data.worker_count = 0  # grain worker processes (0: threads of the training process)
    config.data.synthetic_count = 8  # images of the 'synthetic' source
    config.data.synthetic_size = 64  # their side in pixels

    # The objective (irrm_jax.losses): per-sample sums, straight-through quantisation, fresh z per step.
    config.loss = ml_collections.ConfigDict()
    config.loss.lambda_fit = 16.0  # LR vs bicubic L2 weight: scale**2 (4 at x2, 16 at x4)
    config.loss.lambda_rec = 1.0  # Charbonnier reconstruction weight
    config.loss.lambda_ce = 1.0  # sum z^2 / N weight
    config.loss.charbonnier_eps = 1e-6  # inside the square root
    config.loss.gaussian_scale = 1.0  # temperature of the z drawn for the reconstruction

    # The optimiser (irrm_jax.optimizer): clip -> coupled L2 -> Adam -> -lr(step), MultiStepLR schedule.
    config.optim = ml_collections.ConfigDict()
    config.optim.learning_rate = 2e-4
    config.optim.milestones = (100_000, 200_000, 300_000, 400_000)  # lr *= gamma after this many updates
    config.optim.gamma = 0.5
    config.optim.b1 = 0.9
    config.optim.b2 = 0.999
    config.optim.eps = 1e-8
    config.optim.weight_decay = 1e-5  # coupled L2 (torch.optim.Adam), not AdamW
    config.optim.clip_norm = 10.0  # global gradient norm

    # The loop (irrm_jax.train).
    config.train = ml_collections.ConfigDict()
    config.train.num_steps = PAPER_STEPS
    config.train.seed = 10  # IRN's manual_seed: initialisation, z draws and data order
    config.train.log_every = 100  # steps between training metrics (means over the interval)
    config.train.eval_every = 5_000  # steps between validations (and at the end)
    config.train.checkpoint_every = 5_000  # steps between checkpoints (and at the end and on SIGTERM)
    config.train.keep_checkpoints = 3  # newest checkpoints kept
    config.train.progress_bar = True  # tqdm bar on the first process
    # >1: that many steps in one jitted call (lax.scan; same updates, one host dispatch instead of K). On an H100, 10
    # made IRN x4's loop 5% faster and IRRM-S x4's no faster (README, Performance). The intervals above must be
    # multiples of it.
    config.train.steps_per_call = 1
    config.train.profile_steps = 0  # >0: jax.profiler trace of this many steps (from the 11th) in workdir/profile
    return config
