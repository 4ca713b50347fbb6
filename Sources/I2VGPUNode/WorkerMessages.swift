import Foundation
import I2VCore

/// The line-delimited JSON protocol of `worker/protocol/PROTOCOL.md`, server side.
public enum WorkerProtocol {
    public static let version = 1
}

/// What a worker serves: the model and everything a job for it is checked against.
public struct WorkerModelInfo: Codable, Sendable, Equatable {
    public var id: String
    public var nativeArea: Int
    public var sizeMultiple: Int
    public var fps: Int
    /// The `"WxH"` sizes the model was trained at, its native one first; empty from a worker older than the
    /// model table.
    public var sizes: [String]
    /// The most frames it makes; nil when the worker does not say.
    public var maxFrames: Int?
    public var lastImage: LastImageSupport
    /// 2 for a model with a high-noise and a low-noise expert (Wan2.2 A14B).
    public var experts: Int
    public var boundaryRatio: Double?
    public var defaultInferSteps: Int?
    public var defaultGuidanceScale: Double?
    public var defaultGuidanceScale2: Double?
    public var memoryGiB: ModelMemoryEstimate?

    public typealias LastImageSupport = I2VCore.LastImageSupport

    /// A real model's estimated GPU peak in GiB, with every component on the GPU and with model CPU offload.
    public struct ModelMemoryEstimate: Codable, Sendable, Equatable {
        public var residentGiB: Double
        public var offloadGiB: Double

        package enum CodingKeys: String, CodingKey {
            case residentGiB = "resident_gib"
            case offloadGiB = "offload_gib"
        }
    }

    package enum CodingKeys: String, CodingKey {
        case id
        case nativeArea = "native_area"
        case sizeMultiple = "size_multiple"
        case fps, sizes
        case maxFrames = "max_frames"
        case lastImage = "last_image"
        case experts
        case boundaryRatio = "boundary_ratio"
        case defaultInferSteps = "default_infer_steps"
        case defaultGuidanceScale = "default_guidance_scale"
        case defaultGuidanceScale2 = "default_guidance_scale_2"
        case memoryGiB = "memory_gib"
    }

    package init(
        id: String, nativeArea: Int, sizeMultiple: Int, fps: Int, sizes: [String] = [], maxFrames: Int? = nil,
        lastImage: LastImageSupport = .none, experts: Int = 1
    ) {
        self.id = id
        self.nativeArea = nativeArea
        self.sizeMultiple = sizeMultiple
        self.fps = fps
        self.sizes = sizes
        self.maxFrames = maxFrames
        self.lastImage = lastImage
        self.experts = experts
    }

    /// A worker from before the model table sends only the first four fields.
    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        id = try container.decode(String.self, forKey: .id)
        nativeArea = try container.decode(Int.self, forKey: .nativeArea)
        sizeMultiple = try container.decode(Int.self, forKey: .sizeMultiple)
        fps = try container.decode(Int.self, forKey: .fps)
        sizes = try container.decodeIfPresent([String].self, forKey: .sizes) ?? []
        maxFrames = try container.decodeIfPresent(Int.self, forKey: .maxFrames)
        lastImage = try container.decodeIfPresent(LastImageSupport.self, forKey: .lastImage) ?? .none
        experts = try container.decodeIfPresent(Int.self, forKey: .experts) ?? 1
        boundaryRatio = try container.decodeIfPresent(Double.self, forKey: .boundaryRatio)
        defaultInferSteps = try container.decodeIfPresent(Int.self, forKey: .defaultInferSteps)
        defaultGuidanceScale = try container.decodeIfPresent(Double.self, forKey: .defaultGuidanceScale)
        defaultGuidanceScale2 = try container.decodeIfPresent(Double.self, forKey: .defaultGuidanceScale2)
        memoryGiB = try container.decodeIfPresent(ModelMemoryEstimate.self, forKey: .memoryGiB)
    }

    /// Unknown values are written as `null`, as the protocol spells them.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(id, forKey: .id)
        try container.encode(nativeArea, forKey: .nativeArea)
        try container.encode(sizeMultiple, forKey: .sizeMultiple)
        try container.encode(fps, forKey: .fps)
        try container.encode(sizes, forKey: .sizes)
        try container.encode(maxFrames, forKey: .maxFrames)
        try container.encode(lastImage, forKey: .lastImage)
        try container.encode(experts, forKey: .experts)
        try container.encode(boundaryRatio, forKey: .boundaryRatio)
        try container.encode(defaultInferSteps, forKey: .defaultInferSteps)
        try container.encode(defaultGuidanceScale, forKey: .defaultGuidanceScale)
        try container.encode(defaultGuidanceScale2, forKey: .defaultGuidanceScale2)
        try container.encode(memoryGiB, forKey: .memoryGiB)
    }
}

public struct WorkerMemory: Codable, Sendable, Equatable {
    public var freeBytes: Int?
    public var bytesPerToken: Int?
    /// What the worker turned on to fit (absent from workers older than the model table).
    public var cpuOffload: Bool?
    public var vaeTiling: Bool?

    package enum CodingKeys: String, CodingKey {
        case freeBytes = "free_bytes"
        case bytesPerToken = "bytes_per_token"
        case cpuOffload = "cpu_offload"
        case vaeTiling = "vae_tiling"
    }

    /// Unknown values are written as `null`, as the protocol spells them, rather than left out.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(freeBytes, forKey: .freeBytes)
        try container.encode(bytesPerToken, forKey: .bytesPerToken)
        try container.encodeIfPresent(cpuOffload, forKey: .cpuOffload)
        try container.encodeIfPresent(vaeTiling, forKey: .vaeTiling)
    }

    package init(freeBytes: Int? = nil, bytesPerToken: Int? = nil) {
        self.freeBytes = freeBytes
        self.bytesPerToken = bytesPerToken
    }
}

/// The speed preset a worker runs and what it turned on for it (`I2V_SPEED`): regional compilation, the step
/// cache, FP8, a fused step-distillation LoRA, and the steps and guidance that then replace every job's.
public struct WorkerSpeed: Codable, Sendable, Equatable {
    public var preset: String
    public var compiled: Bool
    public var cacheThreshold: Double?
    public var fp8: Bool
    public var lora: String?
    public var inferSteps: Int?
    public var guidanceScale: Double?

    package enum CodingKeys: String, CodingKey {
        case preset, compiled
        case cacheThreshold = "cache_threshold"
        case fp8, lora
        case inferSteps = "infer_steps"
        case guidanceScale = "guidance_scale"
    }

    public init(
        preset: String, compiled: Bool = false, cacheThreshold: Double? = nil, fp8: Bool = false, lora: String? = nil,
        inferSteps: Int? = nil, guidanceScale: Double? = nil
    ) {
        self.preset = preset
        self.compiled = compiled
        self.cacheThreshold = cacheThreshold
        self.fp8 = fp8
        self.lora = lora
        self.inferSteps = inferSteps
        self.guidanceScale = guidanceScale
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        self.preset = try container.decode(String.self, forKey: .preset)
        self.compiled = try container.decodeIfPresent(Bool.self, forKey: .compiled) ?? false
        self.cacheThreshold = try container.decodeIfPresent(Double.self, forKey: .cacheThreshold)
        self.fp8 = try container.decodeIfPresent(Bool.self, forKey: .fp8) ?? false
        self.lora = try container.decodeIfPresent(String.self, forKey: .lora)
        self.inferSteps = try container.decodeIfPresent(Int.self, forKey: .inferSteps)
        self.guidanceScale = try container.decodeIfPresent(Double.self, forKey: .guidanceScale)
    }

    /// Whatever is off or not replaced is written as `null`, as the protocol spells it, rather than left out.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(preset, forKey: .preset)
        try container.encode(compiled, forKey: .compiled)
        try container.encode(cacheThreshold, forKey: .cacheThreshold)
        try container.encode(fp8, forKey: .fp8)
        try container.encode(lora, forKey: .lora)
        try container.encode(inferSteps, forKey: .inferSteps)
        try container.encode(guidanceScale, forKey: .guidanceScale)
    }
}

public struct WorkerReady: Codable, Sendable, Equatable {
    public var `protocol`: Int
    public var model: WorkerModelInfo
    public var device: String
    public var dtype: String
    public var slots: Int
    public var memory: WorkerMemory?
    /// Absent from workers older than speed presets.
    public var speed: WorkerSpeed?
    /// A group (one job on several devices) says how many processes it runs and on which devices; `device` is
    /// then those devices joined with `+`. Absent for one process.
    public var ranks: Int?
    public var devices: [String]?

    package init(
        protocol: Int, model: WorkerModelInfo, device: String, dtype: String, slots: Int, memory: WorkerMemory? = nil, speed: WorkerSpeed? = nil,
        ranks: Int? = nil, devices: [String]? = nil
    ) {
        self.protocol = `protocol`
        self.model = model
        self.device = device
        self.dtype = dtype
        self.slots = slots
        self.memory = memory
        self.speed = speed
        self.ranks = ranks
        self.devices = devices
    }
}

/// A LoRA of a job: in a `run`, the file the worker loads (`path`) and the SHA-256 it must have; in a `done`,
/// what the video was made with (no path).
public struct WorkerLoRA: Codable, Sendable, Equatable {
    public var name: String
    public var path: String?
    public var scale: Double
    public var sha256: String
    /// The one transformer of a two-expert model it loads into; absent (nil): both, as before experts.
    public var expert: LoRAExpert?

    package init(name: String, path: String? = nil, scale: Double, sha256: String, expert: LoRAExpert? = nil) {
        self.name = name
        self.path = path
        self.scale = scale
        self.sha256 = sha256
        self.expert = expert
    }
}

public enum WorkerErrorKind: String, Codable, Sendable {
    case oom
    case badInput = "bad_input"
    case cancelled
    case `internal`
}

public struct WorkerDone: Codable, Sendable, Equatable {
    public var taskID: String
    public var path: String
    public var width: Int
    public var height: Int
    public var numFrames: Int
    public var fps: Int
    public var seed: Int
    public var inferenceSeconds: Double
    public var encodeSeconds: Double?
    /// The denoising steps the job ran and the guidance it used: the job's own, or the speed preset's where it
    /// replaces them (turbo). Absent from workers older than speed presets.
    public var inferSteps: Int?
    public var guidanceScale: Double?
    /// The model that made it, and the low-noise expert's guidance where the model has two experts.
    public var model: String?
    public var guidanceScale2: Double?
    /// The LoRAs the video was made with; absent when it used none.
    public var loras: [WorkerLoRA]?

    package enum CodingKeys: String, CodingKey {
        case taskID = "task_id"
        case path, width, height
        case numFrames = "num_frames"
        case fps, seed
        case inferenceSeconds = "inference_seconds"
        case encodeSeconds = "encode_seconds"
        case inferSteps = "infer_steps"
        case guidanceScale = "guidance_scale"
        case model
        case guidanceScale2 = "guidance_scale_2"
        case loras
    }

    package init(
        taskID: String, path: String, width: Int, height: Int, numFrames: Int, fps: Int, seed: Int, inferenceSeconds: Double, encodeSeconds: Double? = nil,
        inferSteps: Int? = nil, guidanceScale: Double? = nil
    ) {
        self.taskID = taskID
        self.path = path
        self.width = width
        self.height = height
        self.numFrames = numFrames
        self.fps = fps
        self.seed = seed
        self.inferenceSeconds = inferenceSeconds
        self.encodeSeconds = encodeSeconds
        self.inferSteps = inferSteps
        self.guidanceScale = guidanceScale
    }
}

extension ServedModel {
    /// What a ready worker says it serves, as the rest of the service checks jobs against it.
    package init(_ info: WorkerModelInfo, takesLoRAs: Bool = true) {
        self.init(
            id: info.id, nativeArea: info.nativeArea, sizeMultiple: info.sizeMultiple, fps: info.fps, sizes: info.sizes,
            maxFrames: info.maxFrames, lastImage: info.lastImage, experts: info.experts, takesLoRAs: takesLoRAs
        )
    }
}

/// Messages the worker writes on its stdout.
public enum WorkerEvent: Sendable, Equatable {
    case ready(WorkerReady)
    /// `expert` names which of a two-expert model's transformers ran the step.
    case progress(taskID: String, step: Int, totalSteps: Int, expert: String? = nil)
    /// The job entered a phase (`JobPhase`); kept as the worker's word, so a phase this server does not
    /// know yet still counts as one.
    case phase(taskID: String, phase: String)
    case done(WorkerDone)
    case error(taskID: String?, kind: WorkerErrorKind, message: String)
    case fatal(message: String)
}

extension WorkerEvent: Codable {
    package enum CodingKeys: String, CodingKey {
        case type
        case taskID = "task_id"
        case step
        case totalSteps = "total_steps"
        case kind
        case message
        case phase
        case expert
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        let type = try container.decode(String.self, forKey: .type)
        switch type {
        case "ready":
            self = .ready(try WorkerReady(from: decoder))
        case "progress":
            self = .progress(
                taskID: try container.decode(String.self, forKey: .taskID),
                step: try container.decode(Int.self, forKey: .step),
                totalSteps: try container.decode(Int.self, forKey: .totalSteps),
                expert: try container.decodeIfPresent(String.self, forKey: .expert)
            )
        case "phase":
            self = .phase(
                taskID: try container.decode(String.self, forKey: .taskID),
                phase: try container.decode(String.self, forKey: .phase)
            )
        case "done":
            self = .done(try WorkerDone(from: decoder))
        case "error":
            self = .error(
                taskID: try container.decodeIfPresent(String.self, forKey: .taskID),
                kind: (try? container.decode(WorkerErrorKind.self, forKey: .kind)) ?? .internal,
                message: try container.decode(String.self, forKey: .message)
            )
        case "fatal":
            self = .fatal(message: try container.decode(String.self, forKey: .message))
        default:
            throw DecodingError.dataCorruptedError(
                forKey: .type,
                in: container,
                debugDescription: "unknown worker message type \(type)"
            )
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        switch self {
        case .ready(let ready):
            try container.encode("ready", forKey: .type)
            try ready.encode(to: encoder)
        case .progress(let taskID, let step, let totalSteps, let expert):
            try container.encode("progress", forKey: .type)
            try container.encode(taskID, forKey: .taskID)
            try container.encode(step, forKey: .step)
            try container.encode(totalSteps, forKey: .totalSteps)
            try container.encodeIfPresent(expert, forKey: .expert)
        case .phase(let taskID, let phase):
            try container.encode("phase", forKey: .type)
            try container.encode(taskID, forKey: .taskID)
            try container.encode(phase, forKey: .phase)
        case .done(let done):
            try container.encode("done", forKey: .type)
            try done.encode(to: encoder)
        case .error(let taskID, let kind, let message):
            try container.encode("error", forKey: .type)
            try container.encode(taskID, forKey: .taskID)
            try container.encode(kind, forKey: .kind)
            try container.encode(message, forKey: .message)
        case .fatal(let message):
            try container.encode("fatal", forKey: .type)
            try container.encode(message, forKey: .message)
        }
    }
}

/// A job as the worker receives it in a `run` message. Steps and guidance left out take the model's defaults.
public struct WorkerJob: Codable, Sendable, Equatable {
    public var taskID: String
    public var imagePath: String
    public var prompt: String
    public var negativePrompt: String
    public var width: Int
    public var height: Int
    public var numFrames: Int
    public var inferSteps: Int?
    public var guidanceScale: Double?
    public var seed: Int
    public var outputPath: String
    /// The frame the video ends on, for a model that takes one.
    public var lastImagePath: String?
    /// The low-noise expert's guidance, for a model with two experts.
    public var guidanceScale2: Double?
    /// The model the task was queued for: a worker serving another one refuses the job.
    public var model: String?
    /// The job's LoRAs (at most 4); absent for none.
    public var loras: [WorkerLoRA]?

    package enum CodingKeys: String, CodingKey {
        case taskID = "task_id"
        case imagePath = "image_path"
        case prompt
        case negativePrompt = "negative_prompt"
        case width, height
        case numFrames = "num_frames"
        case inferSteps = "infer_steps"
        case guidanceScale = "guidance_scale"
        case seed
        case outputPath = "output_path"
        case lastImagePath = "last_image_path"
        case guidanceScale2 = "guidance_scale_2"
        case model
        case loras
    }

    package init(
        taskID: String, imagePath: String, prompt: String, negativePrompt: String, width: Int, height: Int, numFrames: Int,
        inferSteps: Int?, guidanceScale: Double?, seed: Int, outputPath: String, lastImagePath: String? = nil,
        guidanceScale2: Double? = nil, model: String? = nil, loras: [WorkerLoRA]? = nil
    ) {
        self.taskID = taskID
        self.imagePath = imagePath
        self.prompt = prompt
        self.negativePrompt = negativePrompt
        self.width = width
        self.height = height
        self.numFrames = numFrames
        self.inferSteps = inferSteps
        self.guidanceScale = guidanceScale
        self.seed = seed
        self.outputPath = outputPath
        self.lastImagePath = lastImagePath
        self.guidanceScale2 = guidanceScale2
        self.model = model
        self.loras = loras
    }
}

/// Messages the server writes on the worker's stdin.
public enum WorkerCommand: Sendable, Equatable {
    case run(WorkerJob)
    case cancel(taskID: String)
    case shutdown
}

extension WorkerCommand: Codable {
    package enum CodingKeys: String, CodingKey {
        case type
        case taskID = "task_id"
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        switch try container.decode(String.self, forKey: .type) {
        case "run": self = .run(try WorkerJob(from: decoder))
        case "cancel": self = .cancel(taskID: try container.decode(String.self, forKey: .taskID))
        case "shutdown": self = .shutdown
        case let other:
            throw DecodingError.dataCorruptedError(forKey: .type, in: container, debugDescription: "unknown command \(other)")
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        switch self {
        case .run(let job):
            try container.encode("run", forKey: .type)
            try job.encode(to: encoder)
        case .cancel(let taskID):
            try container.encode("cancel", forKey: .type)
            try container.encode(taskID, forKey: .taskID)
        case .shutdown:
            try container.encode("shutdown", forKey: .type)
        }
    }

    /// One protocol line, newline included.
    public func line() throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(self), as: UTF8.self) + "\n"
    }
}
