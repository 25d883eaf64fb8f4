use burn::module::{Initializer, Module};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::backend::Backend;
use burn::tensor::ops::ConvOptions;
use burn::tensor::Tensor;

use crate::config::{Arch, ResNetConfig};
use crate::conv::{conv_forward_in, ConvImpl};
use crate::precision::Precision;
use crate::norm::{batch_norm_forward, batch_norm_relu_forward};

/// torchvision initialises convolutions with Kaiming normal, fan-out, ReLU gain.
fn conv(cin: usize, cout: usize, kernel: usize, stride: usize, pad: usize) -> Conv2dConfig {
    Conv2dConfig::new([cin, cout], [kernel, kernel])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .with_bias(false)
        .with_initializer(Initializer::KaimingNormal { gain: 2f64.sqrt(), fan_out_only: true })
}

/// The projection shortcut (`downsample.0` conv, `downsample.1` BN in torchvision).
#[derive(Module, Debug)]
pub struct Downsample<B: Backend> {
    pub conv: Conv2d<B>,
    pub bn: BatchNorm<B>,
}

/// One residual block. A bottleneck has `conv3`/`bn3`; a basic block has not.
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    pub conv1: Conv2d<B>,
    pub bn1: BatchNorm<B>,
    pub conv2: Conv2d<B>,
    pub bn2: BatchNorm<B>,
    pub conv3: Option<Conv2d<B>>,
    pub bn3: Option<BatchNorm<B>>,
    pub downsample: Option<Downsample<B>>,
}

impl<B: Backend> Block<B> {
    fn new(arch: Arch, cin: usize, width: usize, stride: usize, zero_init: bool, device: &B::Device) -> Self {
        let cout = if arch.bottleneck() { width * 4 } else { width };
        let bn = |c: usize| BatchNormConfig::new(c).init(device);
        let (conv1, conv2, conv3) = if arch.bottleneck() {
            // v1.5: the stride sits on the 3×3 conv, not on the first 1×1.
            (
                conv(cin, width, 1, 1, 0).init(device),
                conv(width, width, 3, stride, 1).init(device),
                Some(conv(width, cout, 1, 1, 0).init(device)),
            )
        } else {
            (conv(cin, width, 3, stride, 1).init(device), conv(width, width, 3, 1, 1).init(device), None)
        };
        let mut bn2 = bn(width);
        let mut bn3 = conv3.as_ref().map(|_| bn(cout));
        if zero_init {
            let last = bn3.as_mut().unwrap_or(&mut bn2);
            last.gamma = last.gamma.clone().map(|g| g.zeros_like());
        }
        let downsample = (stride != 1 || cin != cout).then(|| Downsample {
            conv: conv(cin, cout, 1, stride, 0).init(device),
            bn: bn(cout),
        });
        Self { conv1, bn1: bn(width), conv2, bn2, conv3, bn3, downsample }
    }

    fn forward(&self, x: Tensor<B, 4>, imp: ConvImpl, precision: Precision) -> Tensor<B, 4> {
        let conv_forward = |conv: &Conv2d<B>, x: Tensor<B, 4>| conv_forward_in(conv, x, imp, precision);
        let identity = match &self.downsample {
            Some(d) => batch_norm_forward(&d.bn, conv_forward(&d.conv, x.clone())),
            None => x.clone(),
        };
        let out = batch_norm_relu_forward(&self.bn1, conv_forward(&self.conv1, x));
        let out = match (&self.conv3, &self.bn3) {
            // Bottleneck: conv2 → BN → ReLU → conv3 → BN.
            (Some(c3), Some(b3)) => {
                let out = batch_norm_relu_forward(&self.bn2, conv_forward(&self.conv2, out));
                batch_norm_forward(b3, conv_forward(c3, out))
            }
            _ => batch_norm_forward(&self.bn2, conv_forward(&self.conv2, out)),
        };
        // One kernel each way on the GPU (three and two as tensor operations).
        sca_kernels::add_relu(out, identity)
    }
}

/// The four stage outputs (torchvision's `layer1` .. `layer4`).
#[derive(Debug, Clone)]
pub struct Stages<B: Backend> {
    pub c2: Tensor<B, 4>,
    pub c3: Tensor<B, 4>,
    pub c4: Tensor<B, 4>,
    pub c5: Tensor<B, 4>,
}

impl<B: Backend> Stages<B> {
    pub fn to_array(self) -> [Tensor<B, 4>; 4] {
        [self.c2, self.c3, self.c4, self.c5]
    }
}

/// A ResNet whose field names match torchvision's module names.
#[derive(Module, Debug)]
pub struct ResNet<B: Backend> {
    pub conv1: Conv2d<B>,
    pub bn1: BatchNorm<B>,
    pub maxpool: Option<MaxPool2d>,
    pub layer1: Vec<Block<B>>,
    pub layer2: Vec<Block<B>>,
    pub layer3: Vec<Block<B>>,
    pub layer4: Vec<Block<B>>,
    pub fc: Option<Linear<B>>,
    /// Kept as plain data so a loaded model knows its own layout.
    pub arch_name: String,
    pub small_stem: bool,
    /// How the convolutions run; not saved with the weights.
    pub conv_impl: ConvImpl,
    /// The convolutions' arithmetic type; not saved with the weights (always f32).
    pub precision: Precision,
}

impl<B: Backend> ResNet<B> {
    pub(crate) fn new(cfg: &ResNetConfig, device: &B::Device) -> Self {
        let arch = cfg.arch;
        let (conv1, maxpool) = if cfg.small_stem {
            (conv(3, 64, 3, 1, 1).init(device), None)
        } else {
            let pool = MaxPool2dConfig::new([3, 3])
                .with_strides([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init();
            (conv(3, 64, 7, 2, 3).init(device), Some(pool))
        };
        let mut cin = 64;
        let mut stage = |i: usize| -> Vec<Block<B>> {
            let width = 64 << i;
            (0..arch.blocks()[i])
                .map(|b| {
                    let stride = if i > 0 && b == 0 { 2 } else { 1 };
                    let block = Block::new(arch, cin, width, stride, cfg.zero_init_residual, device);
                    cin = arch.stage_channels()[i];
                    block
                })
                .collect()
        };
        let (layer1, layer2, layer3, layer4) = (stage(0), stage(1), stage(2), stage(3));
        // torchvision keeps nn.Linear's default init for fc, which is Burn's default too.
        let fc = cfg.num_classes.map(|c| LinearConfig::new(arch.feature_dim(), c).init(device));
        Self {
            conv1,
            bn1: BatchNormConfig::new(64).init(device),
            maxpool,
            layer1,
            layer2,
            layer3,
            layer4,
            fc,
            arch_name: arch.name().to_string(),
            small_stem: cfg.small_stem,
            conv_impl: cfg.conv_impl,
            precision: cfg.precision,
        }
    }

    pub fn arch(&self) -> Arch {
        self.arch_name.parse().expect("ResNet built with a known arch")
    }

    pub fn stage_channels(&self) -> [usize; 4] {
        self.arch().stage_channels()
    }

    pub fn feature_dim(&self) -> usize {
        self.arch().feature_dim()
    }

    pub fn stem(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let x = batch_norm_relu_forward(&self.bn1, conv_forward_in(&self.conv1, x, self.conv_impl, self.precision));
        match &self.maxpool {
            Some(pool) => pool.forward(x),
            None => x,
        }
    }

    /// Runs stage `i` (1..=4, torchvision's `layer{i}`) on its input.
    pub fn layer(&self, i: usize, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let blocks = match i {
            1 => &self.layer1,
            2 => &self.layer2,
            3 => &self.layer3,
            4 => &self.layer4,
            _ => panic!("ResNet has stages 1..=4, got {i}"),
        };
        blocks.iter().fold(x, |x, b| b.forward(x, self.conv_impl, self.precision))
    }

    pub fn forward_stages(&self, x: Tensor<B, 4>) -> Stages<B> {
        let c2 = self.layer(1, self.stem(x));
        let c3 = self.layer(2, c2.clone());
        let c4 = self.layer(3, c3.clone());
        let c5 = self.layer(4, c4.clone());
        Stages { c2, c3, c4, c5 }
    }

    /// Pooled last-stage feature, `[batch, feature_dim]`.
    pub fn forward_features(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        global_avg_pool(self.forward_stages(x).c5)
    }

    /// Logits through `fc` when the model has one, else the pooled feature.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let f = self.forward_features(x);
        match &self.fc {
            Some(fc) => fc.forward(f),
            None => f,
        }
    }

    /// Switches how the convolutions run (parameters unchanged), e.g. after loading weights.
    pub fn with_conv_impl(mut self, imp: ConvImpl) -> Self {
        self.conv_impl = imp;
        self
    }

    /// Switches the convolutions' arithmetic type (parameters unchanged).
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    /// Drops the classifier, e.g. after loading torchvision weights for pretraining.
    pub fn without_fc(mut self) -> Self {
        self.fc = None;
        self
    }
}

/// One convolution of the network as a forward pass meets it: what a per-layer kernel
/// benchmark (`sca bench convs`) needs to recreate it.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvLayer {
    /// torchvision's module path, e.g. `layer1.0.conv2`.
    pub name: String,
    /// Input `[C, H, W]` of one image.
    pub input: [usize; 3],
    /// Weight `[O, C, kh, kw]`.
    pub weight: [usize; 4],
    pub options: ConvOptions<2>,
}

impl ConvLayer {
    fn of<B: Backend>(name: String, conv: &Conv2d<B>, [c, h, w]: [usize; 3]) -> Self {
        let (top, left) = match conv.padding {
            PaddingConfig2d::Explicit(top, left, bottom, right) => {
                debug_assert!(top == bottom && left == right, "the ResNet pads symmetrically");
                (top, left)
            }
            _ => (0, 0),
        };
        let options = ConvOptions::new(conv.stride, [top, left], conv.dilation, conv.groups);
        Self { name, input: [c, h, w], weight: conv.weight.dims(), options }
    }

    /// The output `[O, H', W']`.
    pub fn output(&self) -> [usize; 3] {
        let [oh, ow] = sca_kernels::conv::output_size([self.input[1], self.input[2]], [self.weight[2], self.weight[3]], &self.options);
        [self.weight[0], oh, ow]
    }
}

impl<B: Backend> ResNet<B> {
    /// Every convolution of a forward pass on `[H, W]` images, in the order it runs.
    pub fn conv_layers(&self, [h, w]: [usize; 2]) -> Vec<ConvLayer> {
        let stem = ConvLayer::of("conv1".into(), &self.conv1, [3, h, w]);
        let [c, mut h, mut w] = stem.output();
        if self.maxpool.is_some() {
            // 3×3, stride 2, padding 1.
            (h, w) = ((h - 1) / 2 + 1, (w - 1) / 2 + 1);
        }
        let mut x = [c, h, w];
        let mut layers = vec![stem];
        for (i, stage) in [&self.layer1, &self.layer2, &self.layer3, &self.layer4].into_iter().enumerate() {
            for (j, block) in stage.iter().enumerate() {
                let name = |part: &str| format!("layer{}.{j}.{part}", i + 1);
                if let Some(d) = &block.downsample {
                    layers.push(ConvLayer::of(name("downsample.0"), &d.conv, x));
                }
                let mut y = x;
                for (part, conv) in [("conv1", Some(&block.conv1)), ("conv2", Some(&block.conv2)), ("conv3", block.conv3.as_ref())] {
                    if let Some(conv) = conv {
                        let layer = ConvLayer::of(name(part), conv, y);
                        y = layer.output();
                        layers.push(layer);
                    }
                }
                x = y;
            }
        }
        layers
    }
}

/// Mean over the spatial axes: `[B, C, H, W]` → `[B, C]`.
pub fn global_avg_pool<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 2> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h * w]).mean_dim(2).reshape([b, c])
}
