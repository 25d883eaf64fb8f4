//! Run-time device choice: `auto`, `cpu`, `cuda` or `cuda:N`.
//!
//! The binary is built with both backends; `auto` probes for the CUDA driver library
//! (the CUDA backend loads it dynamically) and falls back to the pure-Rust Flex backend.
//! Code that needs a backend is written once as a generic function and called through
//! [`with_backend!`], which picks the concrete type from the choice.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceArg {
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DeviceArg::Auto),
            "cpu" => Ok(DeviceArg::Cpu),
            "cuda" => Ok(DeviceArg::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceArg::Cuda)
                .ok_or_else(|| format!("unknown device '{s}' (expected auto, cpu, cuda or cuda:N)")),
        }
    }
}

/// A resolved device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    Cpu,
    Cuda(usize),
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Choice::Cpu => write!(f, "cpu (Flex backend)"),
            Choice::Cuda(i) => match gpu_name(*i) {
                Some(name) => write!(f, "cuda:{i} ({name}, CUDA backend)"),
                None => write!(f, "cuda:{i} (CUDA backend)"),
            },
        }
    }
}

const DRIVER_LIBRARIES: [&str; 3] = ["libcuda.so.1", "libcuda.so", "nvcuda.dll"];

/// Whether the NVIDIA driver library can be loaded on this machine.
pub fn cuda_driver_present() -> bool {
    DRIVER_LIBRARIES
        .iter()
        // SAFETY: loading the driver runs only its own initialisers, as the CUDA backend would.
        .any(|name| unsafe { libloading::Library::new(name) }.is_ok())
}

/// The model of GPU `ordinal` as the driver names it (e.g. "NVIDIA H200"), asked once per
/// process: benchmark rows, convolution plans and logs say which card they come from.
pub fn gpu_name(ordinal: usize) -> Option<String> {
    static NAMES: Mutex<BTreeMap<usize, Option<String>>> = Mutex::new(BTreeMap::new());
    NAMES.lock().unwrap_or_else(|p| p.into_inner()).entry(ordinal).or_insert_with(|| driver_gpu_name(ordinal)).clone()
}

/// `cuDeviceGetName` through the driver library (`None` where there is none or it fails).
fn driver_gpu_name(ordinal: usize) -> Option<String> {
    use std::ffi::{c_char, c_int, c_uint, CStr};
    type CuInit = unsafe extern "C" fn(c_uint) -> c_int;
    type CuDeviceGet = unsafe extern "C" fn(*mut c_int, c_int) -> c_int;
    type CuDeviceGetName = unsafe extern "C" fn(*mut c_char, c_int, c_int) -> c_int;
    let ordinal = c_int::try_from(ordinal).ok()?;
    // SAFETY: the driver API's documented entry points (CUresult cuInit(unsigned),
    // cuDeviceGet(CUdevice*, int), cuDeviceGetName(char*, int, CUdevice); CUdevice is an int),
    // called with valid pointers and the buffer's true length. The library stays loaded
    // (forgotten, not closed): the CUDA backend uses the same initialised driver.
    unsafe {
        let lib = DRIVER_LIBRARIES.iter().find_map(|name| libloading::Library::new(name).ok())?;
        let init = *lib.get::<CuInit>(b"cuInit\0").ok()?;
        let device_get = *lib.get::<CuDeviceGet>(b"cuDeviceGet\0").ok()?;
        let device_name = *lib.get::<CuDeviceGetName>(b"cuDeviceGetName\0").ok()?;
        std::mem::forget(lib);
        let mut device: c_int = 0;
        let mut name = [0 as c_char; 256];
        if init(0) != 0 || device_get(&mut device, ordinal) != 0 || device_name(name.as_mut_ptr(), name.len() as c_int, device) != 0 {
            return None;
        }
        Some(CStr::from_ptr(name.as_ptr()).to_string_lossy().trim().to_string()).filter(|n| !n.is_empty())
    }
}

impl DeviceArg {
    pub fn resolve(self) -> anyhow::Result<Choice> {
        Ok(match self {
            DeviceArg::Cpu => Choice::Cpu,
            DeviceArg::Cuda(i) if cuda_driver_present() => Choice::Cuda(i),
            DeviceArg::Cuda(i) => anyhow::bail!("device cuda:{i} requested but no NVIDIA driver (libcuda) was found"),
            DeviceArg::Auto if cuda_driver_present() => Choice::Cuda(0),
            DeviceArg::Auto => Choice::Cpu,
        })
    }

    /// Resolves and tells the user what was picked.
    pub fn resolve_and_report(self) -> anyhow::Result<Choice> {
        let choice = self.resolve()?;
        eprintln!("device: {choice}{}", if self == DeviceArg::Auto { " [auto]" } else { "" });
        if let Choice::Cuda(i) = choice {
            crate::gpu_cache::install_requested(gpu_name(i).as_deref())?;
        }
        Ok(choice)
    }
}

pub type CpuBackend = burn::backend::Flex;
/// CubeCL's CUDA backend without Burn's operation fusion: convolutions (`model.conv: gemm`)
/// and the heads' matmuls reach their explicit kernels by type (see the `sca-kernels` crate).
pub type CudaBackend = sca_kernels::CudaBackend;

/// `with_backend!(choice, |B, device| expr)`: evaluates `expr` with `B` bound to the
/// autodiff backend of the chosen device and `device` to its device value.
#[macro_export]
macro_rules! with_backend {
    ($choice:expr, |$b:ident, $dev:ident| $body:expr) => {
        match $choice {
            $crate::device::Choice::Cpu => {
                type $b = burn::backend::Autodiff<$crate::device::CpuBackend>;
                let $dev = burn::backend::flex::FlexDevice;
                $body
            }
            $crate::device::Choice::Cuda(index) => {
                type $b = burn::backend::Autodiff<$crate::device::CudaBackend>;
                let $dev = burn::backend::cuda::CudaDevice::new(index);
                $body
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Result<DeviceArg, ()>) {
        assert_eq!(input.parse::<DeviceArg>().map_err(|_| ()), expected, "{input}");
    }

    #[test]
    fn parses_device_names() {
        check("auto", Ok(DeviceArg::Auto));
        check("cpu", Ok(DeviceArg::Cpu));
        check("cuda", Ok(DeviceArg::Cuda(0)));
        check("cuda:3", Ok(DeviceArg::Cuda(3)));
        check("cuda:x", Err(()));
        check("gpu", Err(()));
    }

    #[test]
    fn cpu_resolves_to_cpu() {
        assert_eq!(DeviceArg::Cpu.resolve().unwrap(), Choice::Cpu);
    }
}
