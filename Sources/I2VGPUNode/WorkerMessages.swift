import Foundation
import I2VCore

/// The line-delimited JSON protocol of `worker/protocol/PROTOCOL.md`, server side.
public enum WorkerProtocol {
    public static let version = 1
}

public struct WorkerModelInfo: Codable, Sendable, Equatable {
    public var id: String
    public var nativeArea: Int
    public var sizeMultiple: Int
    public var fps: Int

    package enum CodingKeys: String, CodingKey {
        case id
        case nativeArea = "native_area"
        case sizeMultiple = "size_multiple"
        case fps
    }

    package init(id: String, nativeArea: Int, sizeMultiple: Int, fps: Int) {
        self.id = id
        self.nativeArea = nativeArea
        self.sizeMultiple = sizeMultiple
        self.fps = fps
    }
}

public struct WorkerMemory: Codable, Sendable, Equatable {
    public var freeBytes: Int?
    public var bytesPerToken: Int?

    package enum CodingKeys: String, CodingKey {
        case freeBytes = "free_bytes"
        case bytesPerToken = "bytes_per_token"
    }

    /// Unknown values are written as `null`, as the protocol spells them, rather than left out.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(freeBytes, forKey: .freeBytes)
        try container.encode(bytesPerToken, forKey: .bytesPerToken)
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

    package init(protocol: Int, model: WorkerModelInfo, device: String, dtype: String, slots: Int, memory: WorkerMemory? = nil, speed: WorkerSpeed? = nil) {
        self.protocol = `protocol`
        self.model = model
        self.device = device
        self.dtype = dtype
        self.slots = slots
        self.memory = memory
        self.speed = speed
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

    package enum CodingKeys: String, CodingKey {
        case taskID = "task_id"
        case path, width, height
        case numFrames = "num_frames"
        case fps, seed
        case inferenceSeconds = "inference_seconds"
        case encodeSeconds = "encode_seconds"
        case inferSteps = "infer_steps"
        case guidanceScale = "guidance_scale"
    }

    package init(taskID: String, path: String, width: Int, height: Int, numFrames: Int, fps: Int, seed: Int, inferenceSeconds: Double, encodeSeconds: Double? = nil, inferSteps: Int? = nil, guidanceScale: Double? = nil) {
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

/// Messages the worker writes on its stdout.
public enum WorkerEvent: Sendable, Equatable {
    case ready(WorkerReady)
    case progress(taskID: String, step: Int, totalSteps: Int)
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
                totalSteps: try container.decode(Int.self, forKey: .totalSteps)
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
        case .progress(let taskID, let step, let totalSteps):
            try container.encode("progress", forKey: .type)
            try container.encode(taskID, forKey: .taskID)
            try container.encode(step, forKey: .step)
            try container.encode(totalSteps, forKey: .totalSteps)
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

/// A job as the worker receives it in a `run` message.
public struct WorkerJob: Codable, Sendable, Equatable {
    public var taskID: String
    public var imagePath: String
    public var prompt: String
    public var negativePrompt: String
    public var width: Int
    public var height: Int
    public var numFrames: Int
    public var inferSteps: Int
    public var guidanceScale: Double
    public var seed: Int
    public var outputPath: String

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
    }

    package init(taskID: String, imagePath: String, prompt: String, negativePrompt: String, width: Int, height: Int, numFrames: Int, inferSteps: Int, guidanceScale: Double, seed: Int, outputPath: String) {
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
