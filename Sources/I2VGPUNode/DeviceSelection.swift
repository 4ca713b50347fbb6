import Foundation
import Logging
import Subprocess
import I2VCore

/// Where the node's inference workers run: one worker per entry.
public enum DeviceSelection: Sendable, Equatable {
    /// Every CUDA device the driver lists, or one CPU worker where it lists none.
    case auto
    case list([String])

    /// `I2V_DEVICES` (`auto` or a comma list), or else the older single `I2V_DEVICE` as a one-entry list.
    public init(devices: String?, device: String?) {
        let trimmed = devices?.trimmingCharacters(in: .whitespaces) ?? ""
        if !trimmed.isEmpty {
            let entries = trimmed.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces).lowercased() }.filter { !$0.isEmpty }
            self = trimmed.lowercased() == "auto" || entries.isEmpty ? .auto : .list(entries)
        } else if let device = device?.trimmingCharacters(in: .whitespaces).lowercased(), !device.isEmpty, device != "auto" {
            self = .list([device])
        } else {
            self = .auto
        }
    }

    /// The device of each worker, in worker order.
    package func resolve(logger: Logger) async throws -> [String] {
        switch self {
        case .list(let entries):
            for entry in entries where !Self.isSupported(entry) {
                throw ConfigurationProblem("I2V_DEVICES entry \"\(entry)\" is not a device: use cpu, cuda or cuda:N (or auto)")
            }
            return entries
        case .auto:
            let gpus = await Self.listedCUDADevices(logger: logger)
            return gpus.isEmpty ? ["cpu"] : gpus.map { "cuda:\($0)" }
        }
    }

    package static func isSupported(_ entry: String) -> Bool {
        if entry == "cpu" || entry == "cuda" { return true }
        guard entry.hasPrefix("cuda:"), let index = Int(entry.dropFirst("cuda:".count)) else { return false }
        return index >= 0
    }

    /// What the worker of `device` needs in its environment. A `cuda:N` worker sees only its own GPU, so a
    /// crash or a leak there cannot touch the memory of the others, and to it that GPU is plain `cuda`.
    package static func workerEnvironment(device: String) -> [String: String] {
        if device.hasPrefix("cuda:") {
            return ["CUDA_VISIBLE_DEVICES": String(device.dropFirst("cuda:".count)), "I2V_DEVICE": "cuda"]
        }
        return ["I2V_DEVICE": device]
    }

    /// The indices in `nvidia-smi -L`'s `GPU <n>: …` lines; none where the tool is missing or fails.
    package static func listedCUDADevices(logger: Logger) async -> [Int] {
        do {
            let result = try await Subprocess.run(
                .name("nvidia-smi"),
                arguments: ["-L"],
                output: .string(limit: 64 * 1024),
                error: .discarded
            )
            guard result.terminationStatus.isSuccess else { return [] }
            return parseGPUList(result.standardOutput)
        } catch {
            logger.info("no CUDA devices listed; running one CPU worker", metadata: ["nvidia-smi": "\(error)"])
            return []
        }
    }

    /// MIG instances are listed indented under their GPU; only the GPU lines name devices to pin.
    package static func parseGPUList(_ output: String) -> [Int] {
        output.split(whereSeparator: \.isNewline).compactMap { line in
            guard line.hasPrefix("GPU "), let colon = line.firstIndex(of: ":") else { return nil }
            return Int(line[line.index(line.startIndex, offsetBy: 4)..<colon])
        }
    }
}
