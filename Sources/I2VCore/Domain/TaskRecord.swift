import Foundation

public enum TaskStatus: String, Codable, Sendable, CaseIterable {
    case inQueue = "InQueue"
    case inProgress = "InProgress"
    case succeed = "Succeed"
    case failed = "Failed"
    case cancelled = "Cancelled"

    public var isTerminal: Bool {
        switch self {
        case .inQueue, .inProgress: false
        case .succeed, .failed, .cancelled: true
        }
    }
}

/// What a client asked for, after validation and resolution planning.
public struct TaskParameters: Codable, Sendable, Equatable {
    public var model: String
    public var prompt: String
    public var negativePrompt: String
    public var width: Int
    public var height: Int
    /// Frames the model will make (`4k+1`), not the raw `num_frames` of the request.
    public var numFrames: Int
    public var guidanceScale: Double
    public var inferSteps: Int
    public var seed: Int
    /// The low-noise expert's guidance, for a model with two experts; nil: `guidanceScale` for both.
    public var guidanceScale2: Double?

    package init(
        model: String, prompt: String, negativePrompt: String, width: Int, height: Int, numFrames: Int, guidanceScale: Double, inferSteps: Int, seed: Int,
        guidanceScale2: Double? = nil
    ) {
        self.model = model
        self.prompt = prompt
        self.negativePrompt = negativePrompt
        self.width = width
        self.height = height
        self.numFrames = numFrames
        self.guidanceScale = guidanceScale
        self.inferSteps = inferSteps
        self.seed = seed
        self.guidanceScale2 = guidanceScale2
    }
}

/// Seconds spent in each phase of image intake; kept for the logs and the benchmarks.
public struct IntakeTimings: Codable, Sendable, Equatable {
    public var fetch: Double
    /// Decode, orientation, cover resize and crop: libvips runs them as one streaming pipeline.
    public var decode: Double
    /// Encoding the prepared PNG.
    public var encode: Double
    public init(fetch: Double = 0, decode: Double = 0, encode: Double = 0) {
        self.fetch = fetch
        self.decode = decode
        self.encode = encode
    }
}

public struct TaskResult: Codable, Sendable, Equatable {
    public var videoName: String
    public var width: Int
    public var height: Int
    public var numFrames: Int
    public var fps: Int
    public var inferenceSeconds: Double
    public var encodeSeconds: Double
    /// What the worker actually ran, where it reports it: a speed preset may replace the request's steps and
    /// guidance (a distilled model runs 4 steps without guidance whatever was asked).
    public var inferSteps: Int?
    public var guidanceScale: Double?

    public init(
        videoName: String,
        width: Int,
        height: Int,
        numFrames: Int,
        fps: Int,
        inferenceSeconds: Double,
        encodeSeconds: Double,
        inferSteps: Int? = nil,
        guidanceScale: Double? = nil
    ) {
        self.videoName = videoName
        self.width = width
        self.height = height
        self.numFrames = numFrames
        self.fps = fps
        self.inferenceSeconds = inferenceSeconds
        self.encodeSeconds = encodeSeconds
        self.inferSteps = inferSteps
        self.guidanceScale = guidanceScale
    }
}

/// One row of the task store. The store is the truth; every other view of a task is derived from it.
public struct TaskRecord: Sendable, Equatable {
    public var id: String
    public var ownerKeyHash: String
    public var status: TaskStatus
    public var parameters: TaskParameters
    /// The prepared input image's name in the media store: a key, not a path, because nodes sharing the
    /// storage root may mount it in different places.
    public var inputKey: String
    /// The prepared frame the video ends on, for a model that takes one; nil: first frame only.
    public var lastInputKey: String?
    public var intake: IntakeTimings
    public var reason: String?
    public var attempts: Int
    public var cancelRequested: Bool
    public var progressStep: Int?
    public var progressTotal: Int?
    /// The node running it and until when its claim holds; the node's heartbeat extends it, and once it
    /// passes any node may put the task back in the queue.
    public var lease: Lease?
    public var result: TaskResult?
    public var videoExpired: Bool
    public var createdAt: Date
    public var startedAt: Date?
    public var finishedAt: Date?
    /// Where the task's events are delivered, as the submit asked; nil: no webhook.
    public var webhook: WebhookSubscription?
    /// The LoRAs it runs with, pinned to the files' SHA-256 at submit; empty: none.
    public var loras: [TaskLoRA]

    public init(
        id: String,
        ownerKeyHash: String,
        parameters: TaskParameters,
        inputKey: String,
        intake: IntakeTimings,
        createdAt: Date = Date()
    ) {
        self.id = id
        self.ownerKeyHash = ownerKeyHash
        self.status = .inQueue
        self.parameters = parameters
        self.inputKey = inputKey
        self.lastInputKey = nil
        self.intake = intake
        self.reason = nil
        self.attempts = 0
        self.cancelRequested = false
        self.progressStep = nil
        self.progressTotal = nil
        self.lease = nil
        self.result = nil
        self.videoExpired = false
        self.createdAt = createdAt
        self.startedAt = nil
        self.finishedAt = nil
        self.webhook = nil
        self.loras = []
    }
}

/// A node's claim on a running task.
public struct Lease: Sendable, Equatable {
    public var node: String
    public var expiresAt: Date

    public init(node: String, expiresAt: Date) {
        self.node = node
        self.expiresAt = expiresAt
    }
}

/// What the dispatcher learns when a task leaves the worker.
public enum TaskOutcome: Sendable, Equatable {
    case succeeded(TaskResult)
    case failed(reason: String)
    case cancelled(reason: String)
}

public enum CancelOutcome: Sendable, Equatable {
    /// A queued task was cancelled at once.
    case cancelledQueued
    /// A running task was asked to stop; the worker confirms later.
    case cancelRequested
    case alreadyCancelled
    case alreadyFinished(TaskStatus)
    case notFound
}

public enum RequeueOutcome: Sendable, Equatable {
    case requeued
    case failed(reason: String)
    /// The client had asked for it to stop, so it ended Cancelled instead of going back to the queue.
    case cancelled
    case notRunning
}

/// How the end of a running task was recorded.
public enum FinishOutcome: Sendable, Equatable {
    /// Recorded with this final status. A result that arrives after the client's cancel was acknowledged
    /// ends `cancelled`: the acknowledgement promised that, so the result is discarded.
    case ended(TaskStatus)
    /// The task was no longer running under this node (it had already ended, been put back, or its lease
    /// had expired and another node took it): nothing changed.
    case notRunning
}

public struct QueueCounts: Sendable, Equatable {
    public var queued: Int
    public var running: Int

    package init(queued: Int, running: Int) {
        self.queued = queued
        self.running = running
    }
}
