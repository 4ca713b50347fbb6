import Foundation
import I2VCore
import I2VGPUNode
import Logging
import Subprocess

#if canImport(System)
import System
#else
import SystemPackage
#endif

/// The workers of a node: the supervised Python workers, one per device, or the doubles a test put in.
func buildWorkerNode(
    configuration: ServiceConfiguration,
    signal: DispatchSignal,
    metrics: ServiceMetrics,
    overrides: AppOverrides,
    logger: Logger
) async throws -> (pool: WorkerPool, supervisors: [WorkerSupervisor], catalog: ModelCatalog) {
    let doubles = overrides.workers.isEmpty ? overrides.worker.map { [$0] } ?? [] : overrides.workers
    if !doubles.isEmpty {
        // Doubles stand in for the configured devices' workers, or for CPU workers where no list matches them.
        let labels: [String] =
            if case .list(let devices) = configuration.devices, devices.count == doubles.count { devices } else {
                Array(repeating: "cpu", count: doubles.count)
            }
        let capacity = configuration.maxConcurrent ?? WorkerPool.defaultCapacity(workers: doubles.count)
        let slots = WorkerPool.slotsPerWorker(total: capacity, workers: doubles.count)
        let pool = WorkerPool(
            members: doubles.enumerated().map { .init(index: $0.offset, device: labels[$0.offset], worker: $0.element, slots: slots) },
            capacity: capacity,
            metrics: metrics
        )
        return (pool, [], overrides.catalog ?? ModelCatalog(models: [ServedModel(id: "test-model", nativeArea: 15_360)]))
    }
    let checkpoint = try await resolveCheckpoint(configuration: configuration, logger: logger)
    let devices = try await configuration.devices.resolve(logger: logger)
    let capacity = configuration.maxConcurrent ?? WorkerPool.defaultCapacity(workers: devices.count)
    let slots = WorkerPool.slotsPerWorker(total: capacity, workers: devices.count)
    let supervisors = devices.enumerated().map { index, device in
        WorkerSupervisor(
            launch: workerLaunch(configuration: configuration, checkpoint: checkpoint, device: device, slots: slots),
            index: index,
            device: device,
            signal: signal,
            metrics: metrics,
            logger: logger
        )
    }
    let pool = WorkerPool(
        members: supervisors.map { .init(index: $0.index, device: $0.device, worker: $0, slots: slots) },
        capacity: capacity,
        metrics: metrics
    )
    logger.info("inference workers", metadata: ["devices": "\(devices.joined(separator: ","))", "slots_each": "\(slots)", "total": "\(capacity)"])
    let catalog =
        overrides.catalog
        ?? checkpoint.map { ModelCatalog.load(checkpoint: $0) }
        ?? ModelCatalog.load(checkpoint: configuration.model ?? ServiceConfiguration.defaultDemoModel)
    return (pool, supervisors, catalog)
}

/// The checkpoint the worker loads: `I2V_MODEL_PATH`, or a demo model's checkpoint in the data dir, built on
/// first start (a few seconds) so `serve` works on a machine that has never seen the model; nil for a real
/// model named without a path, whose checkpoint the worker takes from the Hugging Face hub (or its cache).
///
/// Nodes sharing a data dir may all start at once: each builds into a folder of its own and renames it into
/// place, so none ever reads a half-written checkpoint, and the first rename wins.
func resolveCheckpoint(configuration: ServiceConfiguration, logger: Logger) async throws -> String? {
    if let path = configuration.modelPath { return path }
    guard let model = configuration.demoModel else { return nil }
    let demo = configuration.demoModelDirectory(model)
    if FileManager.default.fileExists(atPath: demo.appending(path: "i2v_model.json").path) { return demo.path }
    logger.info("building the demo checkpoint", metadata: ["model": "\(model)", "path": "\(demo.path)"])
    let staging = demo.deletingLastPathComponent().appending(path: ".\(demo.lastPathComponent).\(RandomIdentifier.hex128())")
    defer { try? FileManager.default.removeItem(at: staging) }
    let python = absolutePython(configuration.pythonExecutable)
    let result = try await Subprocess.run(
        python.contains("/") ? .path(.init(python)) : .name(python),
        arguments: ["-m", "i2v_worker.demo", "--model", model, "--output", staging.path],
        environment: .inherit.updating(["PYTHONPATH": workerPythonPath(configuration)]),
        output: .discarded,
        error: .string(limit: 64 * 1024)
    )
    guard result.terminationStatus.isSuccess else {
        throw ConfigurationProblem("could not build the demo checkpoint with \(python): \(result.standardError)")
    }
    do {
        try FileManager.default.moveItem(at: staging, to: demo)
    } catch  where FileManager.default.fileExists(atPath: demo.appending(path: "i2v_model.json").path) {
        // Another node finished first; its checkpoint is the same demo model.
    }
    return demo.path
}

func absolutePython(_ executable: String) -> String {
    guard executable.contains("/"), !executable.hasPrefix("/") else { return executable }
    return URL(fileURLWithPath: executable).standardizedFileURL.path
}

func workerPythonPath(_ configuration: ServiceConfiguration) -> String {
    let inherited = ProcessInfo.processInfo.environment["PYTHONPATH"].map { ":" + $0 } ?? ""
    return configuration.workerDirectory.path + inherited
}

func workerLaunch(configuration: ServiceConfiguration, checkpoint: String?, device: String, slots: Int) -> WorkerLaunch {
    var environment = [
        "PYTHONPATH": workerPythonPath(configuration),
        "I2V_WORKER_SLOTS": String(slots),
        "I2V_VAE_TILING": configuration.vaeTiling ? "1" : "0",
        "PYTHONUNBUFFERED": "1",
        // The limit the submit checked against, whichever way the server was configured.
        "I2V_LORA_MAX_RANK": String(configuration.loraMaxRank),
    ]
    environment["I2V_MODEL_PATH"] = checkpoint
    environment["I2V_MODEL"] = configuration.model ?? configuration.demoModel
    environment["I2V_CPU_OFFLOAD"] = configuration.cpuOffload
    environment.merge(DeviceSelection.workerEnvironment(device: device)) { _, pinned in pinned }
    environment.merge(configuration.speed.environment) { _, speed in speed }
    return WorkerLaunch(
        executable: absolutePython(configuration.pythonExecutable),
        arguments: ["-m", "i2v_worker"],
        environment: environment
    )
}
