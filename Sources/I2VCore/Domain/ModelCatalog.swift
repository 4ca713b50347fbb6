import Foundation

/// Whether a model's jobs may, must or must not give the frame the video ends on.
public enum LastImageSupport: String, Codable, Sendable {
    case none, optional, required
}

/// A model the service serves, with what a job for it is checked against: the limits resolution planning
/// needs, the sizes it was trained at, its longest clip and whether it takes a last frame.
public struct ServedModel: Codable, Sendable, Equatable {
    public var id: String
    public var nativeArea: Int
    public var sizeMultiple: Int
    public var fps: Int
    /// `"WxH"`, the native one first; empty where the worker did not say (an older worker or registry row).
    public var sizes: [String]
    /// The most frames a job may ask for; nil where not said.
    public var maxFrames: Int?
    public var lastImage: LastImageSupport
    /// Transformers that share the denoising (Wan2.2 A14B: 2, a high-noise and a low-noise expert, each with
    /// its own guidance); 1 where not said.
    public var experts: Int
    /// Whether a job for it may give LoRAs: false where every worker serving it is a group of devices
    /// (`cuda:0+cuda:1`), which takes none. Rows and files from before it was said read true, as such
    /// workers took LoRAs then.
    public var takesLoRAs: Bool

    package enum CodingKeys: String, CodingKey {
        case id
        case nativeArea = "native_area"
        case sizeMultiple = "size_multiple"
        case fps, sizes
        case maxFrames = "max_frames"
        case lastImage = "last_image"
        case experts
        case takesLoRAs = "loras"
    }

    /// Wan2.1's frame rate.
    public static let defaultFPS = 16

    public init(
        id: String, nativeArea: Int, sizeMultiple: Int = 16, fps: Int = defaultFPS, sizes: [String] = [], maxFrames: Int? = nil,
        lastImage: LastImageSupport = .none, experts: Int = 1, takesLoRAs: Bool = true
    ) {
        self.id = id
        self.nativeArea = nativeArea
        self.sizeMultiple = sizeMultiple
        self.fps = fps
        self.sizes = sizes
        self.maxFrames = maxFrames
        self.lastImage = lastImage
        self.experts = experts
        self.takesLoRAs = takesLoRAs
    }

    /// Rows and files from before the model table carry only the first four fields.
    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        id = try container.decode(String.self, forKey: .id)
        nativeArea = try container.decode(Int.self, forKey: .nativeArea)
        sizeMultiple = try container.decodeIfPresent(Int.self, forKey: .sizeMultiple) ?? 16
        fps = try container.decodeIfPresent(Int.self, forKey: .fps) ?? Self.defaultFPS
        sizes = try container.decodeIfPresent([String].self, forKey: .sizes) ?? []
        maxFrames = try container.decodeIfPresent(Int.self, forKey: .maxFrames)
        lastImage = try container.decodeIfPresent(LastImageSupport.self, forKey: .lastImage) ?? .none
        experts = try container.decodeIfPresent(Int.self, forKey: .experts) ?? 1
        takesLoRAs = try container.decodeIfPresent(Bool.self, forKey: .takesLoRAs) ?? true
    }

    /// Each model once, in the order first given, with the first one's facts: the models that several workers
    /// or nodes announce. It takes LoRAs where any of them takes them, since a LoRA task can wait for that one.
    public static func merging(_ models: [ServedModel]) -> [ServedModel] {
        var merged: [ServedModel] = []
        for model in models {
            if let index = merged.firstIndex(where: { $0.id == model.id }) {
                merged[index].takesLoRAs = merged[index].takesLoRAs || model.takesLoRAs
            } else {
                merged.append(model)
            }
        }
        return merged
    }

    /// The `(width, height)` of each of `sizes`.
    public var frameSizes: [(width: Int, height: Int)] {
        sizes.compactMap { size in
            let sides = size.split(separator: "x").compactMap { Int($0) }
            return sides.count == 2 ? (sides[0], sides[1]) : nil
        }
    }
}

/// The served models; the first is the default. Read from the checkpoint's `i2v_model.json` (the demo
/// checkpoint writes one) or inferred from a real checkpoint's name, the same way the worker does.
public struct ModelCatalog: Sendable {
    public var models: [ServedModel]

    public init(models: [ServedModel]) {
        precondition(!models.isEmpty, "a catalog serves at least one model")
        self.models = models
    }

    public var defaultModel: ServedModel { models[0] }

    /// The model table the workers serve from (`I2V_MODEL`), each with its `-demo` twin. A submit may name
    /// one that no worker serves right now: that is a 503 until a worker node for it is up, not an unknown
    /// model.
    public static let tableIDs: [String] = {
        let real = ["wan2.1-i2v-14b-480p", "wan2.1-i2v-14b-720p", "wan2.1-flf2v-14b-720p", "wan2.2-i2v-a14b", "wan2.2-ti2v-5b"]
        return real + real.map { $0 + "-demo" }
    }()

    /// What a submit may name: what is served, then the rest of the table.
    public var askableIDs: [String] {
        let served = models.map(\.id)
        return served + Self.tableIDs.filter { id in !served.contains { $0.lowercased() == id } }
    }

    public func model(id: String) -> ServedModel? {
        models.first { $0.id.lowercased() == id.lowercased() }
    }

    public static func load(checkpoint: String) -> ModelCatalog {
        let metadata = URL(fileURLWithPath: checkpoint).appending(path: "i2v_model.json")
        if let data = try? Data(contentsOf: metadata), let model = try? JSONDecoder().decode(ServedModel.self, from: data) {
            return ModelCatalog(models: [model])
        }
        // The worker's model ids are lower case (`Wan2.2-TI2V-5B-Diffusers` is `wan2.2-ti2v-5b`): one name for
        // one model, whichever side says it.
        var name = (checkpoint.split(separator: "/").last.map(String.init) ?? checkpoint).lowercased()
        if name.hasSuffix("-diffusers") { name = String(name.dropLast("-diffusers".count)) }
        let area = name.uppercased().contains("720P") ? 921_600 : 399_360
        return ModelCatalog(models: [ServedModel(id: name, nativeArea: area)])
    }
}
