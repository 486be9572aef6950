//! `ember`: boots a microVM from a Firecracker config file or from `ember run`
//! arguments, and exits with the guest's outcome.

mod cli;

use std::path::Path;
use std::process::ExitCode;

use cli::{Args, Command, RestoreArgs, SeccompChoice};
use ember_api::controller::VmOverrides;
use ember_api::destination::Destination;
use ember_api::http::HttpLimits;
use ember_api::mmds::MmdsHost;
use ember_api::server::ServerLimits;
use ember_api::service::ServiceOptions;
use ember_vmm::host_files::{open_input, InputKind};
use ember_vmm::signals::TerminationSignals;
use ember_vmm::{error_chain, seccomp};
use ember_vmm::{ExitReason, RestoreConfig, SerialInput, SerialOutput, StartTime, VmConfig};

/// Exit status for an error while building or running the VM.
const EXIT_ERROR: u8 = 1;
/// Exit status for bad usage.
const EXIT_USAGE: u8 = 2;

/// The VM configuration for a boot command, or `None` for help and version.
fn vm_config(args: &Args, start: StartTime) -> Result<Option<VmConfig>, String> {
    let mut config = match &args.command {
        Command::Run(run) => {
            let mut config = VmConfig::new(&run.kernel, run.full_cmdline());
            config.initrd = run.initrd.clone();
            config.vcpu_count = run.vcpus;
            config.mem_size_mib = run.mem_mib;
            config.drives = run.drives.clone();
            config.net_interfaces = run.nets.clone();
            config.vsock = run.vsock.clone();
            if let Some(path) = &run.serial_out {
                let out = Destination::open(path)
                    .map_err(|e| format!("--serial-out: cannot open {}: {e}", path.display()))?;
                config.serial_output = SerialOutput::Writer(Box::new(out));
                config.serial_input = SerialInput::None;
            }
            config.entropy = run.entropy.clone();
            config.start_time = start;
            config
        }
        _ => return Ok(None),
    };
    if let Some(device) = &args.kvm_device {
        config.kvm_device = device.clone();
    }
    Ok(Some(config))
}

/// The seccomp filters the command line asks for.
fn seccomp_filters(choice: &SeccompChoice) -> Result<Option<seccomp::Filters>, String> {
    let filters = match choice {
        SeccompChoice::Off => return Ok(None),
        SeccompChoice::BuiltIn => seccomp::default_filters().map_err(|e| error_chain(&e))?,
        SeccompChoice::File(path) => {
            let file = open_input(path, InputKind::RegularFile, false)
                .map_err(|e| format!("cannot open seccomp filter file {}: {e}", path.display()))?;
            seccomp::filters_from_file(file)
                .map_err(|e| format!("seccomp filter file {}: {e}", path.display()))?
        }
    };
    for (kind, program) in &filters {
        log::debug!(
            "seccomp: {} filter of {} instructions",
            kind.name(),
            program.len()
        );
    }
    Ok(Some(filters))
}

/// The MMDS store the command line sets up: Firecracker's size limit (the
/// API payload limit unless `--mmds-size-limit` says otherwise), filled from
/// `--metadata`.
fn mmds_host(args: &Args) -> Result<MmdsHost, String> {
    let mut mmds = MmdsHost::new(args.mmds_size_limit.unwrap_or(args.api_max_payload));
    if let Some(path) = &args.metadata {
        mmds.load_metadata(path).map_err(|e| error_chain(&e))?;
        log::info!("MMDS filled from {}", path.display());
    }
    Ok(mmds)
}

/// Serves the API on `socket` (none with `--no-api`), booting `config_file`
/// at once if given.
fn serve(
    args: &Args,
    socket: Option<&Path>,
    config_file: Option<&Path>,
    start: StartTime,
) -> Result<ExitReason, String> {
    let resources = config_file
        .map(ember_api::config_file::load)
        .transpose()
        .map_err(|e| error_chain(&e))?;
    let signals = TerminationSignals::install().map_err(|e| error_chain(&e))?;
    let options = ServiceOptions {
        socket: socket.map(Path::to_owned),
        start_time: start,
        instance_id: args.logger.instance_id.clone(),
        resources,
        overrides: VmOverrides {
            seccomp: seccomp_filters(&args.seccomp)?,
            kvm_device: args.kvm_device.clone(),
            mmds: mmds_host(args)?,
        },
        api_limits: ServerLimits {
            http: HttpLimits {
                max_payload_bytes: args.api_max_payload,
                ..HttpLimits::default()
            },
            ..ServerLimits::default()
        },
        metrics_path: args.metrics_path.clone(),
        process_start: args.process_start,
    };
    ember_api::service::run(options, Some(&signals)).map_err(|e| error_chain(&e))
}

/// `ember run --restore`: the VM a snapshot holds, running.
fn restore(args: &Args, restore: &RestoreArgs, start: StartTime) -> Result<ExitReason, String> {
    let mut config = RestoreConfig::new(&restore.state, &restore.mem_file);
    config.resume = true;
    config.net_overrides = restore.net_overrides.clone();
    config.vsock_override = restore.vsock_override.clone();
    config.start_time = start;
    if let Some(device) = &args.kvm_device {
        config.kvm_device = device.clone();
    }
    if let Some(path) = &restore.serial_out {
        let out = Destination::open(path)
            .map_err(|e| format!("--serial-out: cannot open {}: {e}", path.display()))?;
        config.serial_output = SerialOutput::Writer(Box::new(out));
        config.serial_input = SerialInput::None;
    }
    config.seccomp = seccomp_filters(&args.seccomp)?;
    let signals = TerminationSignals::install().map_err(|e| error_chain(&e))?;
    let vm = ember_vmm::restore(config).map_err(|e| error_chain(&e))?;
    vm.run(Some(&signals)).map_err(|e| error_chain(&e))
}

/// Boots what the command line asks for and returns how the VM ended.
fn boot(args: &Args, start: StartTime) -> Result<ExitReason, String> {
    ember_api::logger::configure(args.logger.clone()).map_err(|e| error_chain(&e))?;
    let reason = if let Command::Api {
        socket,
        config_file,
    } = &args.command
    {
        serve(args, Some(socket), config_file.as_deref(), start)?
    } else if let Command::ConfigFile(path) = &args.command {
        serve(args, None, Some(path), start)?
    } else if let Command::Restore(restore_args) = &args.command {
        restore(args, restore_args, start)?
    } else {
        let Some(mut config) = vm_config(args, start)? else {
            return Ok(ExitReason::Stopped);
        };
        config.seccomp = seccomp_filters(&args.seccomp)?;
        let signals = TerminationSignals::install().map_err(|e| error_chain(&e))?;
        let vm = ember_vmm::build(config).map_err(|e| error_chain(&e))?;
        vm.run(Some(&signals)).map_err(|e| error_chain(&e))?
    };
    log::info!("VM stopped: {reason:?}");
    log::logger().flush();
    Ok(reason)
}

/// The process's end for `reason`: after a termination signal, death by that
/// signal (its default action, as Firecracker, which does not catch it, dies),
/// once everything has been cleaned up; otherwise the exit status.
fn exit_for(reason: ExitReason) -> ExitCode {
    if let ExitReason::Signal(signal) = reason {
        use std::io::Write;
        let _ = std::io::stdout().flush();
        ember_vmm::signals::die_by_signal(signal);
    }
    ExitCode::from(u8::try_from(reason.exit_code()).unwrap_or(EXIT_ERROR))
}

fn main() -> ExitCode {
    let start = StartTime::now();
    seccomp::confine_allocator();
    // A reader that went away, or a write past RLIMIT_FSIZE, is a write error
    // for the code that wrote, never the end of the VMM.
    if let Err(e) = ember_vmm::signals::ignore_write_signals() {
        eprintln!("ember: error: {}", error_chain(&e));
        return ExitCode::from(EXIT_ERROR);
    }
    let args = match cli::parse(std::env::args_os().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("ember: {e}\nTry `ember --help`.");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match args.command {
        Command::Help => {
            println!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        Command::Version => {
            // Firecracker's format, first line `Firecracker vX.Y.Z`, which
            // Kata Containers and the Go SDK parse; see the README.
            println!("Firecracker v{}\n", ember_api::REPORTED_FIRECRACKER_VERSION);
            ExitCode::SUCCESS
        }
        Command::SnapshotVersion => {
            println!("v{}.0.0", ember_vmm::snapshot::FORMAT_VERSION);
            ExitCode::SUCCESS
        }
        Command::DescribeSnapshot { path, brief } => {
            let described = if brief {
                ember_vmm::snapshot::format_version(&path).map(|v| format!("v{v}.0.0"))
            } else {
                ember_vmm::snapshot::describe(&path)
            };
            match described {
                Ok(text) => {
                    println!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("ember: error: {}", error_chain(&e));
                    ExitCode::from(EXIT_ERROR)
                }
            }
        }
        _ => match boot(&args, start) {
            Ok(reason) => exit_for(reason),
            Err(message) => {
                log::error!("{message}");
                log::logger().flush();
                eprintln!("ember: error: {}", message.replace('\n', " "));
                ExitCode::from(EXIT_ERROR)
            }
        },
    }
}
