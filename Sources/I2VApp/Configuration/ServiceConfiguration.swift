import Configuration
import Foundation

/// Everything the service reads from its environment, read once at start.
///
/// Keys are read under the `i2v` scope, so `apiKeys` is the environment variable `I2V_API_KEYS`.
public struct ServiceConfiguration: Sendable {
    public var host: String
    public var port: Int
    /// Plain keys from `I2V_API_KEYS`; empty means "use (or generate) the key kept in the data dir".
    public var apiKeys: [String]
    public var dataDirectory: URL
    public var databaseURL: String?
    public var publicURL: String
    /// The node's total of jobs at once, as set; nil leaves it to the number of workers.
    public var maxConcurrent: Int?
    public var maxQueued: Int
    public var videoTTL: Duration
    public var taskRetention: Duration
    public var sweepInterval: Duration
    public var imageTimeout: Duration
    public var imageMaxBytes: Int
    public var imageMaxPixels: Int
    public var allowPrivateImageHosts: Bool
    public var maxBodyBytes: Int
    /// A request head whose URL and header fields come to more than this is answered 431.
    public var maxHeaderBytes: Int
    /// A request head must be complete this long after its first byte (or, first on a connection, after connecting).
    public var headerTimeout: Duration
    /// A connection with no request in flight and nothing received for this long is closed.
    public var idleTimeout: Duration
    /// With this many connections open, new ones are closed as soon as they are accepted.
    public var maxConnections: Int
    public var submitsPerMinute: Int
    public var maxAttempts: Int
    public var shutdownGrace: Duration
    public var cancelGrace: Duration
    public var modelPath: String?
    /// One inference worker per entry: `I2V_DEVICES`, or the single `I2V_DEVICE`.
    public var devices: DeviceSelection
    public var pythonExecutable: String
    /// The worker's source folder, put first on the worker's PYTHONPATH so the server always runs the worker
    /// of its own checkout, whatever the (shared, cached) venv has installed.
    public var workerDirectory: URL
    public var cpuOffload: Bool
    public var vaeTiling: Bool
    public var docsAssetsDirectory: URL
    public var logLevel: String

    public init(reader: ConfigReader) {
        let config = reader.scoped(to: "i2v")
        self.host = config.string(forKey: "host", default: "0.0.0.0")
        self.port = config.int(forKey: "port", default: 8088)
        self.apiKeys = (config.string(forKey: "apiKeys", isSecret: true) ?? "")
            .split(separator: ",")
            .map { $0.trimmingCharacters(in: .whitespaces) }
            .filter { !$0.isEmpty }
        self.dataDirectory = URL(
            fileURLWithPath: config.string(forKey: "dataDir", default: "./data"),
            isDirectory: true
        ).standardizedFileURL
        self.databaseURL = config.string(forKey: "databaseUrl", isSecret: true).flatMap { $0.isEmpty ? nil : $0 }
        let publicURL = config.string(forKey: "publicUrl", default: "http://localhost:8088")
        self.publicURL = publicURL.hasSuffix("/") ? String(publicURL.dropLast()) : publicURL
        self.maxConcurrent = config.int(forKey: "maxConcurrent").map { max(1, $0) }
        self.maxQueued = max(1, config.int(forKey: "maxQueued", default: 100))
        self.videoTTL = .seconds(max(1, config.seconds(forKey: "videoTtlSeconds", default: 3600)))
        self.taskRetention = .seconds(max(1, config.seconds(forKey: "taskRetentionSeconds", default: 86400)))
        self.sweepInterval = .seconds(max(0.05, config.seconds(forKey: "sweepIntervalSeconds", default: 30)))
        self.imageTimeout = .seconds(max(0.1, config.seconds(forKey: "imageTimeoutSeconds", default: 15)))
        self.imageMaxBytes = max(1, config.int(forKey: "imageMaxBytes", default: 20_971_520))
        self.imageMaxPixels = max(1, config.int(forKey: "imageMaxPixels", default: 40_000_000))
        self.allowPrivateImageHosts = config.bool(forKey: "allowPrivateImageHosts", default: false)
        self.maxBodyBytes = max(1024, config.int(forKey: "maxBodyBytes", default: 65_536))
        self.maxHeaderBytes = max(1024, config.int(forKey: "maxHeaderBytes", default: 16_384))
        self.headerTimeout = .seconds(max(0.1, config.seconds(forKey: "headerTimeoutSeconds", default: 10)))
        self.idleTimeout = .seconds(max(0.1, config.seconds(forKey: "idleTimeoutSeconds", default: 75)))
        self.maxConnections = max(1, config.int(forKey: "maxConnections", default: defaultMaxConnections()))
        self.submitsPerMinute = max(0, config.int(forKey: "submitsPerMinute", default: 120))
        self.maxAttempts = max(1, config.int(forKey: "maxAttempts", default: 2))
        self.shutdownGrace = .seconds(max(0, config.seconds(forKey: "shutdownGraceSeconds", default: 30)))
        self.cancelGrace = .seconds(max(0.1, config.seconds(forKey: "cancelGraceSeconds", default: 30)))
        self.modelPath = config.string(forKey: "modelPath").flatMap { $0.isEmpty ? nil : $0 }
        self.devices = DeviceSelection(devices: config.string(forKey: "devices"), device: config.string(forKey: "device"))
        self.pythonExecutable = config.string(forKey: "python", default: ".venv/bin/python")
        self.workerDirectory = URL(
            fileURLWithPath: config.string(forKey: "workerDir", default: "worker"),
            isDirectory: true
        ).standardizedFileURL
        self.cpuOffload = config.bool(forKey: "cpuOffload", default: false)
        self.vaeTiling = config.bool(forKey: "vaeTiling", default: false)
        self.docsAssetsDirectory = URL(
            fileURLWithPath: config.string(forKey: "docsAssetsDir", default: ".swagger-ui"),
            isDirectory: true
        ).standardizedFileURL
        self.logLevel = config.string(forKey: "logLevel", default: "info")
    }

    public var inputsDirectory: URL { dataDirectory.appending(path: "inputs", directoryHint: .isDirectory) }
    public var videosDirectory: URL { dataDirectory.appending(path: "videos", directoryHint: .isDirectory) }
    public var databaseFile: URL { dataDirectory.appending(path: "tasks.sqlite") }
    /// Where the demo checkpoint is built when `I2V_MODEL_PATH` is not set.
    public var demoModelDirectory: URL {
        dataDirectory.appending(path: "models/wan2.1-i2v-demo", directoryHint: .isDirectory)
    }
}

extension ConfigReader {
    /// A number of seconds, written either as an integer or with a fraction (`15`, `0.5`).
    func seconds(forKey key: ConfigKey, default defaultValue: Double) -> Double {
        double(forKey: key) ?? int(forKey: key).map(Double.init) ?? defaultValue
    }
}
