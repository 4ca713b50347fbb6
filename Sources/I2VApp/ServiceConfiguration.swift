import Configuration
import Foundation
import I2VCore
import I2VGPUNode
import I2VHTTP
import I2VStorePostgres
import I2VStoreSQLite
import I2VWebhooks

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
    /// How long one store call may wait for PostgreSQL before the request fails with 503.
    public var databaseTimeout: Duration
    /// This node's name in the shared store (`I2V_NODE_ID`); by default the host name and port, which stay
    /// the same across restarts and differ between nodes on one machine.
    public var nodeID: String
    /// How long a node's claim on a running task lasts without a heartbeat (`I2V_LEASE_SECONDS`).
    public var lease: Duration
    /// How often a live status stream sends a comment when nothing else happened, so proxies keep it open
    /// and a client that went away is noticed (`I2V_STREAM_KEEPALIVE_SECONDS`).
    public var streamKeepAlive: Duration
    /// How often a worker node reads the queue when nothing woke it (`I2V_POLL_SECONDS`).
    public var pollInterval: Duration
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
    /// With this many connections open from one client address (an IPv4 address, an IPv6 /64), its new
    /// ones are closed as soon as they are accepted; 0 for no such cap (behind a proxy every client shares
    /// the proxy's address).
    public var maxConnectionsPerAddress: Int
    /// A request body must be complete within this much time spent waiting for the client's bytes.
    public var bodyTimeout: Duration
    /// A request body must arrive at least this fast, measured over each `bodyRateWindow`; 0 for no minimum.
    public var bodyMinBytesPerSecond: Int
    public var bodyRateWindow: Duration
    /// Where an upload past its first 64 KiB waits while it arrives (`I2V_UPLOAD_SPOOL_DIR`); by default
    /// `uploads` in the data dir. A local disk is best where the data dir is shared over the network.
    public var uploadSpoolDirectory: URL
    public var submitsPerMinute: Int
    public var maxAttempts: Int
    public var shutdownGrace: Duration
    public var cancelGrace: Duration
    /// How long a busy worker keeps taking only tasks of the LoRA set it runs (`I2V_LORA_SET_HOLD_SECONDS`).
    public var loraSetHold: Duration
    public var modelPath: String?
    /// The model the workers serve (`I2V_MODEL`), an id of the worker's model table; nil: the checkpoint's own,
    /// or the default demo model when there is no checkpoint path either.
    public var model: String?
    /// One inference worker per entry: `I2V_DEVICES`, or the single `I2V_DEVICE`.
    public var devices: DeviceSelection
    public var pythonExecutable: String
    /// The worker's source folder, put first on the worker's PYTHONPATH so the server always runs the worker
    /// of its own checkout, whatever the (shared, cached) venv has installed.
    public var workerDirectory: URL
    /// `auto` (the model's memory plan for the card), `1` or `0`; nil leaves it to the worker (auto).
    public var cpuOffload: String?
    public var vaeTiling: Bool
    /// How every worker runs the model (`I2V_SPEED` and its knobs).
    public var speed: SpeedSettings
    /// The LoRA catalog: `.safetensors` files the nodes share (`I2V_LORA_DIR`); by default `loras` in the data dir.
    public var loraDirectory: URL
    /// The most the ranks of a job's LoRAs may add up to (`I2V_LORA_MAX_RANK`): the rank of the one adapter a
    /// worker holds them in. The workers are given the same limit.
    public var loraMaxRank: Int
    /// Whether a submit may give a LoRA by URL, downloaded into the catalog (`I2V_LORA_URLS`, off by default).
    public var loraURLs: Bool
    /// The largest LoRA file downloaded from a URL (`I2V_LORA_URL_MAX_BYTES`, 2 GiB).
    public var loraURLMaxBytes: Int
    /// Bounds one LoRA download, from the lookup to the last byte (`I2V_LORA_URL_TIMEOUT_SECONDS`).
    public var loraURLTimeout: Duration
    /// How long a URL once stored is used again without a download (`I2V_LORA_URL_CACHE_SECONDS`); zero: never.
    public var loraURLReuse: Duration
    public var docsAssetsDirectory: URL
    public var logLevel: String
    /// Webhook signing and delivery (`I2V_WEBHOOK_*`).
    public var webhooks: WebhookSettings

    public init(reader: ConfigReader) {
        let config = reader.scoped(to: "i2v")
        self.host = config.string(forKey: "host", default: "0.0.0.0")
        self.port = config.int(forKey: "port", default: 8088)
        let hostName = ProcessInfo.processInfo.hostName
        self.nodeID = config.string(forKey: "nodeId").flatMap { $0.isEmpty ? nil : $0 } ?? "\(hostName):\(self.port)"
        self.apiKeys = (config.string(forKey: "apiKeys", isSecret: true) ?? "")
            .split(separator: ",")
            .map { $0.trimmingCharacters(in: .whitespaces) }
            .filter { !$0.isEmpty }
        self.dataDirectory =
            URL(
                fileURLWithPath: config.string(forKey: "dataDir", default: "./data"),
                isDirectory: true
            ).standardizedFileURL
        self.databaseURL = config.string(forKey: "databaseUrl", isSecret: true).flatMap { $0.isEmpty ? nil : $0 }
        self.databaseTimeout = .seconds(max(0.1, config.seconds(forKey: "databaseTimeoutSeconds", default: 10)))
        self.lease = .seconds(max(1, config.seconds(forKey: "leaseSeconds", default: 30)))
        let postgres = self.databaseURL.map { $0.lowercased().hasPrefix("postgres") } ?? false
        // On PostgreSQL notifications wake the node; on SQLite everything is in one process and wakes it
        // directly. Either way the poll only covers a lost wake-up.
        self.pollInterval = .seconds(max(0.05, config.seconds(forKey: "pollSeconds", default: postgres ? 5 : 1)))
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
        self.maxConnectionsPerAddress = max(0, config.int(forKey: "maxConnectionsPerAddress", default: 512))
        self.bodyTimeout = .seconds(max(0.1, config.seconds(forKey: "bodyTimeoutSeconds", default: 300)))
        self.bodyMinBytesPerSecond = max(0, config.int(forKey: "bodyMinBytesPerSecond", default: 1024))
        self.bodyRateWindow = .seconds(max(0.1, config.seconds(forKey: "bodyRateWindowSeconds", default: 10)))
        self.uploadSpoolDirectory =
            config.string(forKey: "uploadSpoolDir").flatMap { $0.isEmpty ? nil : $0 }
            .map { URL(fileURLWithPath: $0, isDirectory: true).standardizedFileURL }
            ?? dataDirectory.appending(path: "uploads", directoryHint: .isDirectory)
        self.submitsPerMinute = max(0, config.int(forKey: "submitsPerMinute", default: 120))
        self.streamKeepAlive = .seconds(max(0.1, config.seconds(forKey: "streamKeepaliveSeconds", default: 15)))
        self.maxAttempts = max(1, config.int(forKey: "maxAttempts", default: 2))
        self.shutdownGrace = .seconds(max(0, config.seconds(forKey: "shutdownGraceSeconds", default: 30)))
        self.cancelGrace = .seconds(max(0.1, config.seconds(forKey: "cancelGraceSeconds", default: 30)))
        self.loraSetHold = .seconds(max(0, config.seconds(forKey: "loraSetHoldSeconds", default: 60)))
        self.modelPath = config.string(forKey: "modelPath").flatMap { $0.isEmpty ? nil : $0 }
        self.model = config.string(forKey: "model").flatMap { $0.isEmpty ? nil : $0.lowercased() }
        self.devices = DeviceSelection(devices: config.string(forKey: "devices"), device: config.string(forKey: "device"))
        self.pythonExecutable = config.string(forKey: "python", default: ".venv/bin/python")
        self.workerDirectory =
            URL(
                fileURLWithPath: config.string(forKey: "workerDir", default: "worker"),
                isDirectory: true
            ).standardizedFileURL
        self.cpuOffload = config.string(forKey: "cpuOffload").flatMap(Self.offloadSetting)
        self.vaeTiling = config.bool(forKey: "vaeTiling", default: false)
        self.speed = SpeedSettings(
            preset: config.string(forKey: "speed"),
            compile: config.string(forKey: "compile"),
            cacheThreshold: config.string(forKey: "cacheThreshold"),
            fp8: config.string(forKey: "fp8"),
            loraPath: config.string(forKey: "loraPath")
        )
        self.loraDirectory =
            config.string(forKey: "loraDir").flatMap { $0.isEmpty ? nil : $0 }
            .map { URL(fileURLWithPath: $0, isDirectory: true).standardizedFileURL }
            ?? dataDirectory.appending(path: "loras", directoryHint: .isDirectory)
        self.loraMaxRank = max(1, config.int(forKey: "loraMaxRank", default: Self.defaultLoRAMaxRank))
        self.loraURLs = config.bool(forKey: "loraUrls", default: false)
        self.loraURLMaxBytes = max(1, config.int(forKey: "loraUrlMaxBytes", default: 2 << 30))
        self.loraURLTimeout = .seconds(max(0.1, config.seconds(forKey: "loraUrlTimeoutSeconds", default: 600)))
        self.loraURLReuse = .seconds(max(0, config.seconds(forKey: "loraUrlCacheSeconds", default: 3600)))
        self.docsAssetsDirectory =
            URL(
                fileURLWithPath: config.string(forKey: "docsAssetsDir", default: ".swagger-ui"),
                isDirectory: true
            ).standardizedFileURL
        self.logLevel = config.string(forKey: "logLevel", default: "info")
        self.webhooks = WebhookSettings(config: config)
    }

    public var inputsDirectory: URL { dataDirectory.appending(path: "inputs", directoryHint: .isDirectory) }
    public var videosDirectory: URL { dataDirectory.appending(path: "videos", directoryHint: .isDirectory) }
    public var databaseFile: URL { dataDirectory.appending(path: "tasks.sqlite") }
    /// Whether `I2V_DATABASE_URL` names a PostgreSQL database (otherwise the SQLite file in the data dir).
    public var usesPostgres: Bool {
        guard let url = databaseURL?.lowercased() else { return false }
        return url.hasPrefix("postgres://") || url.hasPrefix("postgresql://")
    }
    /// The worker's own default for `I2V_LORA_MAX_RANK`.
    public static let defaultLoRAMaxRank = 128

    /// The demo model served when there is no checkpoint path and `I2V_MODEL` is unset.
    public static let defaultDemoModel = "wan2.1-i2v-14b-480p-demo"

    /// The demo checkpoint to build and serve: `I2V_MODEL` when it names a demo (`…-demo`), the default demo
    /// when neither a model nor a path is set; nil when a checkpoint path or a real model is configured.
    public var demoModel: String? {
        guard modelPath == nil else { return nil }
        guard let model else { return Self.defaultDemoModel }
        return model.hasSuffix("-demo") ? model : nil
    }

    /// Where a demo checkpoint is built when `I2V_MODEL_PATH` is not set: one folder per demo model.
    public func demoModelDirectory(_ model: String) -> URL {
        dataDirectory.appending(path: "models/\(model)", directoryHint: .isDirectory)
    }

    /// `I2V_CPU_OFFLOAD` as the worker spells it: booleans in any of the usual forms, or `auto`.
    static func offloadSetting(_ value: String) -> String? {
        switch value.lowercased() {
        case "": nil
        case "1", "true", "yes", "on": "1"
        case "0", "false", "no", "off": "0"
        // `auto` and anything else go as given: the worker refuses a value it cannot use, with a reason.
        default: value.lowercased()
        }
    }
}

/// The worker's speed preset and its knobs, as set: `I2V_SPEED` (`quality`, `fast`, `turbo`), `I2V_COMPILE`,
/// `I2V_CACHE_THRESHOLD`, `I2V_FP8` and `I2V_LORA_PATH`. The worker checks them against its device and refuses to
/// start, saying why, on what it cannot do; the server passes them on unchanged (unset ones stay unset, so the
/// worker's defaults apply) to every worker, so all the devices of a node run the same preset.
public struct SpeedSettings: Sendable, Equatable {
    public var preset: String?
    public var compile: String?
    public var cacheThreshold: String?
    public var fp8: String?
    /// Made absolute against the server's working directory, which the worker shares.
    public var loraPath: String?

    public init(preset: String? = nil, compile: String? = nil, cacheThreshold: String? = nil, fp8: String? = nil, loraPath: String? = nil) {
        func given(_ value: String?) -> String? {
            guard let value = value?.trimmingCharacters(in: .whitespaces), !value.isEmpty else { return nil }
            return value
        }
        self.preset = given(preset)
        self.compile = given(compile)
        self.cacheThreshold = given(cacheThreshold)
        self.fp8 = given(fp8)
        self.loraPath = given(loraPath).map { URL(fileURLWithPath: $0).standardizedFileURL.path }
    }

    /// The worker's environment variables for the settings that were given.
    public var environment: [String: String] {
        var environment: [String: String] = [:]
        environment["I2V_SPEED"] = preset
        environment["I2V_COMPILE"] = compile
        environment["I2V_CACHE_THRESHOLD"] = cacheThreshold
        environment["I2V_FP8"] = fp8
        environment["I2V_LORA_PATH"] = loraPath
        return environment
    }
}

extension ConfigReader {
    /// A number of seconds, written either as an integer or with a fraction (`15`, `0.5`).
    func seconds(forKey key: ConfigKey, default defaultValue: Double) -> Double {
        double(forKey: key) ?? int(forKey: key).map(Double.init) ?? defaultValue
    }
}
