import Foundation
import I2VCore
import Logging
import Subprocess

/// Where the node's inference workers run: one worker per entry. An entry joins devices with `+` into a
/// group (`cuda:0+cuda:1`, `cpu+cpu`): one worker whose processes run each job together, split by context
/// parallelism; to the dispatcher, `/ready` and the registry it is one worker with its own slots.
public enum DeviceSelection: Sendable, Equatable {
    /// Every CUDA device the driver lists, or one CPU worker where it lists none.
    case auto
    case list([String])

    /// `I2V_DEVICES` (`auto` or a comma list), or else the older single `I2V_DEVICE` as a one-entry list.
    public init(devices: String?, device: String?) {
        let trimmed = devices?.trimmingCharacters(in: .whitespaces) ?? ""
        if !trimmed.isEmpty {
            let entries = trimmed.split(separator: ",").map { $0.replacingOccurrences(of: " ", with: "").lowercased() }.filter { !$0.isEmpty }
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
                throw ConfigurationProblem(
                    "I2V_DEVICES entry \"\(entry)\" is not a device or a group: use cpu, cuda or cuda:N (or auto), and join a group's devices with + (cuda:0+cuda:1, cpu+cpu)"
                )
            }
            return entries
        case .auto:
            let gpus = await Self.listedCUDADevices(logger: logger)
            return gpus.isEmpty ? ["cpu"] : gpus.map { "cuda:\($0)" }
        }
    }

    /// A device, or a group of two or more: all CPU ranks, or distinct numbered GPUs.
    package static func isSupported(_ entry: String) -> Bool {
        let members = groupMembers(entry)
        if members.count == 1 { return isSingleDevice(members[0]) }
        if members.allSatisfy({ $0 == "cpu" }) { return true }
        let indices = members.compactMap(cudaIndex)
        return indices.count == members.count && Set(indices).count == indices.count
    }

    /// The devices of an entry: one, or a group's.
    package static func groupMembers(_ entry: String) -> [String] {
        entry.split(separator: "+", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
    }

    private static func isSingleDevice(_ device: String) -> Bool {
        device == "cpu" || device == "cuda" || cudaIndex(device) != nil
    }

    private static func cudaIndex(_ device: String) -> Int? {
        guard device.hasPrefix("cuda:"), let index = Int(device.dropFirst("cuda:".count)), index >= 0 else { return nil }
        return index
    }

    /// What the worker of `device` needs in its environment. A `cuda:N` worker sees only its own GPU, so a
    /// crash or a leak there cannot touch the memory of the others, and to it that GPU is plain `cuda`; a
    /// group's worker sees only its GPUs, renumbered from 0 as CUDA does for the visible ones.
    package static func workerEnvironment(device: String) -> [String: String] {
        let members = groupMembers(device)
        let indices = members.compactMap(cudaIndex)
        if members.count > 1, indices.count == members.count {
            return [
                "CUDA_VISIBLE_DEVICES": indices.map(String.init).joined(separator: ","),
                "I2V_DEVICE": indices.indices.map { "cuda:\($0)" }.joined(separator: "+"),
            ]
        }
        if let index = cudaIndex(device) {
            return ["CUDA_VISIBLE_DEVICES": String(index), "I2V_DEVICE": "cuda"]
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
