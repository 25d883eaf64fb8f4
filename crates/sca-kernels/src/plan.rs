//! Which kernel each convolution pass runs on CUDA: a [`ConvPlan`].
//!
//! cubek offers nine implicit-GEMM convolution algorithms (synchronous, asynchronous, TMA
//! and warp-specialised loading; cyclic or strided tiles) on two tensor-core instruction
//! kinds. burn-cubecl's autotune tries six of them per shape and pass, compiling and timing
//! each on the first step; its `ImplicitGemm` strategy pins one. This crate adds a
//! nineteenth, convolution as matmul (`matmul`: im2col, none for 1×1 convolutions, and
//! cubek's tiled matmul). A plan names the kernel per pass for each convolution shape,
//! measured once by `sca bench convs` and kept as a JSON file beside the compiled kernels:
//! a run compiles exactly the kernels it uses, none are timed. Shapes the plan does not list
//! run the plan's per-pass default.
//!
//! A shape is measured, and looked up, in the activations' memory order of its run
//! ([`crate::layout::set_channels_last`]): with NCHW activations a cubek kernel's time
//! includes the copies to and from channels-last, with channels-last ones it does not, so
//! the fastest kernel can differ. Channels-last keys end in ` nhwc`; a run finds the entry of
//! the other order where its own is missing (a plan measured in one order serves the other).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::RwLock;

use burn::tensor::ops::ConvOptions;
use cubek::convolution::{AcceleratedTileKind, ConvAlgorithm};
use serde::{Deserialize, Serialize};

/// The three passes of a convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pass {
    /// `y = conv(x, w)`.
    Forward,
    /// `dx` from `dy` and `w`.
    Data,
    /// `dw` from `x` and `dy`.
    Weight,
}

impl Pass {
    pub const ALL: [Pass; 3] = [Pass::Forward, Pass::Data, Pass::Weight];

    pub fn name(self) -> &'static str {
        match self {
            Pass::Forward => "forward",
            Pass::Data => "data",
            Pass::Weight => "weight",
        }
    }
}

impl fmt::Display for Pass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Pass {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Pass::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| format!("unknown convolution pass '{s}' (expected forward, data or weight)"))
    }
}

const ALGORITHMS: [ConvAlgorithm; 9] = [
    ConvAlgorithm::SimpleSyncCyclic,
    ConvAlgorithm::SimpleSyncStrided,
    ConvAlgorithm::SimpleSyncTilewise,
    ConvAlgorithm::SimpleAsyncCyclic,
    ConvAlgorithm::SimpleAsyncStrided,
    ConvAlgorithm::SimpleAsyncTma,
    ConvAlgorithm::SpecializedAsyncCyclic,
    ConvAlgorithm::SpecializedAsyncStrided,
    ConvAlgorithm::SpecializedTma,
];

/// A kernel for one convolution pass: one of cubek's implicit-GEMM kernels (a loading
/// algorithm and the tensor-core instruction kind, named as cubek names its strategies,
/// `<algorithm>_<cmma|mma>`, e.g. `simple_sync_cyclic_cmma`), or `matmul`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ConvKernel {
    Gemm { algorithm: ConvAlgorithm, tile: AcceleratedTileKind },
    /// Convolution as matmul ([`crate::as_matmul`]): im2col in one kernel (none for 1×1
    /// stride-1 convolutions, which run on the tensors as they are, NCHW or channels-last
    /// rows) and cubek's tiled matmul; the weight gradient split over image groups (cubek's weight-gradient
    /// kernels tile only the small `O × C·k²` output).
    Matmul,
}

impl ConvKernel {
    /// What burn-cubecl's `ConvStrategy::ImplicitGemm` runs: the kernel every pass ran on
    /// before plans existed, the built-in forward and data passes, and the first fallback.
    pub const DEFAULT: ConvKernel = ConvKernel::Gemm { algorithm: ConvAlgorithm::SimpleSyncCyclic, tile: AcceleratedTileKind::Cmma };

    /// The kernel `pass` runs where no plan names one: [`ConvKernel::DEFAULT`], but `matmul`
    /// for weight gradients. Measured on an H200 (`sca bench convs`, ResNet-50 at batch 128,
    /// f32, channels-last; docs/BENCHMARKS.md): over one network pass, cubek's kernel took
    /// 586 ms for the weight gradients against 50 ms for `matmul` (it tiles only the small
    /// `O × C·k²` output), and the forward and data passes 35 and 34 ms against 46 and 45;
    /// with these the built-in kernels come within 5 % of the measured plan.
    pub fn built_in(pass: Pass) -> ConvKernel {
        match pass {
            Pass::Weight => ConvKernel::Matmul,
            Pass::Forward | Pass::Data => ConvKernel::DEFAULT,
        }
    }

    /// cubek's eighteen and the matmul.
    pub fn all() -> Vec<ConvKernel> {
        ALGORITHMS
            .into_iter()
            .flat_map(|algorithm| [AcceleratedTileKind::Cmma, AcceleratedTileKind::Mma].map(|tile| ConvKernel::Gemm { algorithm, tile }))
            .chain([ConvKernel::Matmul])
            .collect()
    }

    /// The six burn-cubecl's autotune compares (each loading style with the tile layout it
    /// pairs with each instruction kind), the two warp-specialised ones it leaves out, and
    /// the matmul: what `sca bench convs` measures unless told otherwise.
    pub fn candidates() -> Vec<ConvKernel> {
        use AcceleratedTileKind::{Cmma, Mma};
        use ConvAlgorithm::*;
        [
            (SimpleSyncCyclic, Cmma),
            (SimpleSyncStrided, Mma),
            (SimpleAsyncCyclic, Cmma),
            (SimpleAsyncStrided, Mma),
            (SimpleAsyncTma, Cmma),
            (SimpleAsyncTma, Mma),
            (SpecializedAsyncCyclic, Cmma),
            (SpecializedTma, Cmma),
        ]
        .into_iter()
        .map(|(algorithm, tile)| ConvKernel::Gemm { algorithm, tile })
        .chain([ConvKernel::Matmul])
        .collect()
    }
}

impl fmt::Display for ConvKernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConvKernel::Gemm { algorithm, tile } => write!(f, "{algorithm}_{tile}"),
            ConvKernel::Matmul => f.write_str("matmul"),
        }
    }
}

impl FromStr for ConvKernel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ConvKernel::all().into_iter().find(|k| k.to_string() == s).ok_or_else(|| {
            let names: Vec<String> = ConvKernel::all().iter().map(|k| k.to_string()).collect();
            format!("unknown convolution kernel '{s}' (expected one of: {})", names.join(", "))
        })
    }
}

impl TryFrom<String> for ConvKernel {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<ConvKernel> for String {
    fn from(k: ConvKernel) -> String {
        k.to_string()
    }
}

/// A convolution as a plan looks it up: everything that shapes the kernel's problem except
/// the batch (a plan measured at one batch serves the others).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConvShape {
    /// Input `[C, H, W]`.
    pub input: [usize; 3],
    /// Weight `[O, C, kh, kw]`.
    pub weight: [usize; 4],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    /// The operands' element type: `f32`, `bf16` or `f16`.
    pub dtype: String,
    /// Whether activations stay channels-last between convolutions in the run
    /// ([`crate::layout::channels_last`]).
    pub channels_last: bool,
}

impl ConvShape {
    /// The output's `[H', W']`.
    pub fn output_size(&self) -> [usize; 2] {
        let options = ConvOptions::new(self.stride, self.padding, self.dilation, 1);
        crate::conv::output_size([self.input[1], self.input[2]], [self.weight[2], self.weight[3]], &options)
    }

    /// Multiply-adds of one pass at `batch` images (all three passes do the same number).
    pub fn macs(&self, batch: usize) -> f64 {
        let [o, c, kh, kw] = self.weight;
        let [h, w] = self.output_size();
        (batch * h * w) as f64 * (o * c * kh * kw) as f64
    }
}

/// The plan's key: `C×H×W * O×C×kh×kw s.. p.. d.. dtype`, e.g.
/// `64x56x56 * 64x64x3x3 s1 p1 d1 f32` (stride, padding and dilation as one number when
/// both sides agree), followed by ` nhwc` for channels-last activations.
impl fmt::Display for ConvShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pair = |p: [usize; 2]| if p[0] == p[1] { p[0].to_string() } else { format!("{},{}", p[0], p[1]) };
        let [c, h, w] = self.input;
        let [o, ci, kh, kw] = self.weight;
        write!(f, "{c}x{h}x{w} * {o}x{ci}x{kh}x{kw} s{} p{} d{} {}", pair(self.stride), pair(self.padding), pair(self.dilation), self.dtype)?;
        if self.channels_last {
            f.write_str(" nhwc")?;
        }
        Ok(())
    }
}

/// A kernel per pass.
pub type PassKernels = BTreeMap<Pass, ConvKernel>;

/// Which kernel each pass of each convolution shape runs (see the module docs). The JSON
/// form is what `sca bench convs` writes:
/// `{"device": .., "batch": .., "default": {"forward": "<kernel>", ..}, "shapes": {"<shape>": {"forward": "<kernel>", ..}}}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvPlan {
    /// The card the plan was measured on, for the reader.
    #[serde(default)]
    pub device: String,
    /// The batch (images per convolution) it was measured at.
    #[serde(default)]
    pub batch: usize,
    /// Per pass, for shapes not listed; a pass missing here runs [`ConvKernel::built_in`].
    #[serde(default)]
    pub default: PassKernels,
    /// Per shape (keyed by [`ConvShape`]'s display), per pass.
    #[serde(default)]
    pub shapes: BTreeMap<String, PassKernels>,
}

impl ConvPlan {
    /// The kernel `pass` of `shape` runs: the shape's entry, else the same shape's in the
    /// other memory order, else the pass's default.
    pub fn kernel(&self, pass: Pass, shape: &ConvShape) -> ConvKernel {
        let other_order = ConvShape { channels_last: !shape.channels_last, ..shape.clone() };
        let entry = |s: &ConvShape| self.shapes.get(&s.to_string()).and_then(|k| k.get(&pass));
        entry(shape)
            .or_else(|| entry(&other_order))
            .or_else(|| self.default.get(&pass))
            .copied()
            .unwrap_or(ConvKernel::built_in(pass))
    }

    /// Reads a plan, naming the file (and through serde the field) in any error.
    pub fn load(path: &std::path::Path) -> Result<ConvPlan, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("convolution plan {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("convolution plan {}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<ConvPlan, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    /// The plan that picks, for each shape and pass, the fastest kernel that ran; the
    /// default of each pass is the fastest of the kernels that took the most shapes (see
    /// `fastest_overall`; a pass never timed has none, so [`ConvKernel::built_in`]).
    pub fn fastest(timings: &[Timing], device: &str, batch: usize) -> ConvPlan {
        let mut shapes: BTreeMap<String, PassKernels> = BTreeMap::new();
        let mut best: BTreeMap<(String, Pass), (ConvKernel, f64)> = BTreeMap::new();
        for t in timings {
            let entry = best.entry((t.shape.clone(), t.pass)).or_insert((t.kernel, t.ms));
            if t.ms < entry.1 {
                *entry = (t.kernel, t.ms);
            }
        }
        for ((shape, pass), (kernel, _)) in best {
            shapes.entry(shape).or_default().insert(pass, kernel);
        }
        let mut default = PassKernels::new();
        for pass in Pass::ALL {
            if let Some(k) = fastest_overall(timings, pass) {
                default.insert(pass, k);
            }
        }
        ConvPlan { device: device.to_string(), batch, default, shapes }
    }

    /// This plan laid over `older`: shapes and passes this one measured replace older
    /// entries, the others stay (a bf16 measurement keeps the f32 choices); the device,
    /// batch and per-pass defaults are this plan's.
    pub fn over(self, older: ConvPlan) -> ConvPlan {
        let mut shapes = older.shapes;
        for (shape, kernels) in self.shapes {
            shapes.entry(shape).or_default().extend(kernels);
        }
        ConvPlan { shapes, ..self }
    }
}

/// One measured (shape, pass, kernel): milliseconds per call, weighted by nothing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    pub shape: String,
    pub pass: Pass,
    pub kernel: ConvKernel,
    pub ms: f64,
}

/// The default for `pass`: among the kernels that took the most shapes, the one with the
/// least summed time over the shapes all of them took. A kernel that refuses some shapes
/// (a TMA kernel may refuse the stem's 3 channels) neither wins by their absence nor
/// becomes the default for shapes it would refuse.
fn fastest_overall(timings: &[Timing], pass: Pass) -> Option<ConvKernel> {
    let of_pass: Vec<&Timing> = timings.iter().filter(|t| t.pass == pass).collect();
    let mut coverage: Vec<(ConvKernel, usize)> = Vec::new();
    for t in &of_pass {
        match coverage.iter_mut().find(|(k, _)| *k == t.kernel) {
            Some((_, n)) => *n += 1,
            None => coverage.push((t.kernel, 1)),
        }
    }
    let most = coverage.iter().map(|&(_, n)| n).max()?;
    let kernels: Vec<ConvKernel> = coverage.into_iter().filter(|&(_, n)| n == most).map(|(k, _)| k).collect();
    let ran = |shape: &str, k: ConvKernel| of_pass.iter().any(|t| t.shape == shape && t.kernel == k);
    let common: Vec<&str> = of_pass.iter().map(|t| t.shape.as_str()).filter(|s| kernels.iter().all(|&k| ran(s, k))).collect();
    kernels
        .into_iter()
        .map(|k| (k, of_pass.iter().filter(|t| t.kernel == k && common.contains(&t.shape.as_str())).map(|t| t.ms).sum::<f64>()))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(k, _)| k)
}

static PLAN: RwLock<Option<ConvPlan>> = RwLock::new(None);

/// Makes `plan` the one every later CUDA convolution of this process looks up.
pub fn use_plan(plan: ConvPlan) {
    *PLAN.write().unwrap_or_else(|p| p.into_inner()) = Some(plan);
}

/// The kernel the current plan (or [`ConvKernel::built_in`] without one) names.
pub fn planned_kernel(pass: Pass, shape: &ConvShape) -> ConvKernel {
    match &*PLAN.read().unwrap_or_else(|p| p.into_inner()) {
        Some(plan) => plan.kernel(pass, shape),
        None => ConvKernel::built_in(pass),
    }
}
