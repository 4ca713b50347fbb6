import Foundation

/// A LoRA a submit asks for: a file of the catalog, or one to download (`I2V_LORA_URLS`), and how strongly
/// it applies.
package struct LoRAChoice: Sendable, Equatable, CustomDebugStringConvertible {
    package enum Source: Sendable, Equatable {
        /// A name the catalog lists.
        case catalog(String)
        /// An http(s) URL of a safetensors file, stored in the catalog at submit.
        case url(String)
    }

    package var source: Source
    package var scale: Double
    /// The one expert of a two-expert model it applies to; nil: every transformer of the model.
    package var expert: LoRAExpert?

    package init(name: String, scale: Double, expert: LoRAExpert? = nil) {
        self.source = .catalog(name)
        self.scale = scale
        self.expert = expert
    }

    package init(url: String, scale: Double, expert: LoRAExpert? = nil) {
        self.source = .url(url)
        self.scale = scale
        self.expert = expert
    }

    package init(source: Source, scale: Double, expert: LoRAExpert? = nil) {
        self.source = source
        self.scale = scale
        self.expert = expert
    }

    /// The catalog name; nil for a URL.
    package var name: String? {
        if case .catalog(let name) = source { return name }
        return nil
    }

    /// What the idempotency fingerprint reads (it reflects the submission): a catalog LoRA for both experts
    /// reads as it did before LoRAs could be URLs or name an expert, so retries across an upgrade keep their
    /// fingerprints.
    package var debugDescription: String {
        let expert = self.expert.map { ", expert: \(String(reflecting: $0.rawValue))" } ?? ""
        return switch source {
        case .catalog(let name): "I2VCore.LoRAChoice(name: \(String(reflecting: name)), scale: \(String(reflecting: scale))\(expert))"
        case .url(let url): "I2VCore.LoRAChoice(url: \(String(reflecting: url)), scale: \(String(reflecting: scale))\(expert))"
        }
    }
}

/// One of the two transformers of a model whose denoising two experts share (Wan2.2 A14B): the high-noise
/// one takes the early steps, the low-noise one the rest. Their LoRAs are published as pairs, one file each.
public enum LoRAExpert: String, Codable, Sendable, CaseIterable {
    case highNoise = "high_noise"
    case lowNoise = "low_noise"

    /// What an item's `expert` may say; `both` is the same as leaving it out.
    package static let names = ["high_noise", "low_noise", "both"]

    /// Whether LoRAs for `a` and `b` (nil: both experts) would load into the same transformer.
    package static func overlap(_ a: LoRAExpert?, _ b: LoRAExpert?) -> Bool {
        a == nil || b == nil || a == b
    }

    /// The experts a LoRA for `expert` (nil: both) applies to.
    package static func covered(by expert: LoRAExpert?) -> [LoRAExpert] {
        expert.map { [$0] } ?? allCases
    }
}

/// A LoRA a task runs with, as it was in the catalog when the task was submitted: the SHA-256 pins the file,
/// so one replaced in the meantime fails the task instead of making a different video under the same name.
public struct TaskLoRA: Codable, Sendable, Equatable {
    public var name: String
    public var scale: Double
    public var sha256: String
    /// The one expert it applies to; nil (and absent from the JSON, so tasks stored before read the same and
    /// store the same): every transformer of the model.
    public var expert: LoRAExpert?

    public init(name: String, scale: Double, sha256: String, expert: LoRAExpert? = nil) {
        self.name = name
        self.scale = scale
        self.sha256 = sha256
        self.expert = expert
    }
}

/// What the catalog knows of one LoRA file, all of it read from the file itself.
public struct LoRAEntry: Sendable, Equatable {
    /// The file name without `.safetensors`.
    public var name: String
    public var path: String
    public var sizeBytes: Int
    /// The largest rank of its layers.
    public var rank: Int
    public var sha256: String
    /// The transformer width its layers read and write (see `LoRAShapes.innerDimension`); nil where no
    /// width stands out.
    public var innerDimension: Int?
    /// The models of the table with that width; empty where it matches none.
    public var models: [String]

    public init(name: String, path: String, sizeBytes: Int, rank: Int, sha256: String, innerDimension: Int?, models: [String]) {
        self.name = name
        self.path = path
        self.sizeBytes = sizeBytes
        self.rank = rank
        self.sha256 = sha256
        self.innerDimension = innerDimension
        self.models = models
    }

    /// Whether the LoRA can apply to `model`. Only a model whose width is known can be ruled out; for any
    /// other the worker decides when it loads the LoRA.
    public func fits(model: String) -> Bool {
        guard let innerDimension, let width = LoRAEntry.innerDimension(ofModel: model) else { return true }
        return width == innerDimension
    }

    /// The transformer width of each model of the table: the 14B models and the A14B experts are 5120 wide,
    /// TI2V-5B 3072, and every demo transformer 24 (2 heads of 12).
    public static func innerDimension(ofModel model: String) -> Int? {
        let id = model.lowercased()
        if id.hasSuffix("-demo") { return ModelCatalog.tableIDs.contains(id) ? 24 : nil }
        switch id {
        case "wan2.1-i2v-14b-480p", "wan2.1-i2v-14b-720p", "wan2.1-flf2v-14b-720p", "wan2.2-i2v-a14b": return 5120
        case "wan2.2-ti2v-5b": return 3072
        default: return nil
        }
    }

    /// The models of the table a LoRA of this width fits.
    public static func models(innerDimension: Int?) -> [String] {
        guard let innerDimension else { return [] }
        return ModelCatalog.tableIDs.filter { Self.innerDimension(ofModel: $0) == innerDimension }
    }
}

/// Why the catalog cannot give a task's LoRA as it was submitted.
public enum LoRAResolutionFailure: Error, Sendable, Equatable {
    /// No file of that name in the catalog any more.
    case missing(name: String)
    /// The file was replaced: its SHA-256 is not the one the task was submitted with.
    case changed(name: String, expected: String, found: String)

    public var reason: String {
        switch self {
        case .missing(let name):
            "LoRA \(name) is no longer in the LoRA catalog"
        case .changed(let name, let expected, let found):
            "LoRA \(name) changed since the task was submitted (sha256 \(found.prefix(12)), not \(expected.prefix(12)))"
        }
    }
}

/// The LoRA files the nodes share. Reading them is the adapter's business; the core only asks what is there.
public protocol LoRACatalog: Sendable {
    /// Every usable LoRA, by name.
    func entries() async -> [LoRAEntry]
    func entry(named name: String) async -> LoRAEntry?
}

extension LoRACatalog {
    public func entry(named name: String) async -> LoRAEntry? {
        await entries().first { $0.name == name }
    }

    /// The file of a task's LoRA as it was submitted.
    public func resolve(_ lora: TaskLoRA) async throws(LoRAResolutionFailure) -> LoRAEntry {
        guard let entry = await entry(named: lora.name) else { throw .missing(name: lora.name) }
        guard entry.sha256 == lora.sha256 else { throw .changed(name: lora.name, expected: lora.sha256, found: entry.sha256) }
        return entry
    }
}

/// A catalog with nothing in it: a node given no LoRA directory.
public struct EmptyLoRACatalog: LoRACatalog {
    public init() {}
    public func entries() async -> [LoRAEntry] { [] }
}

extension TaskLoRA {
    /// The key of a LoRA set: the same files at the same scales on the same experts are the same set in any
    /// order, as the worker sees it (it makes adapters from the SHA-256). A LoRA on both experts keeps the key
    /// it had before LoRAs could name one, so queued tasks keep theirs. The empty string is the set of no LoRAs.
    package static func setKey(_ loras: [TaskLoRA]) -> String {
        loras.map { lora in
            "\(lora.sha256.lowercased())@\(lora.scale)" + (lora.expert.map { "@\($0.rawValue)" } ?? "")
        }.sorted().joined(separator: ",")
    }

    /// How the stores keep a task's LoRAs: one JSON column, NULL for none (every row from before LoRAs).
    package static func stored(_ loras: [TaskLoRA]) -> String? {
        guard !loras.isEmpty, let data = try? JSONEncoder().encode(loras) else { return nil }
        return String(decoding: data, as: UTF8.self)
    }

    package static func fromStored(_ text: String?) -> [TaskLoRA] {
        guard let text, let loras = try? JSONDecoder().decode([TaskLoRA].self, from: Data(text.utf8)) else { return [] }
        return loras
    }
}
