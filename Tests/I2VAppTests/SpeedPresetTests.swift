import Configuration
import Foundation
import Hummingbird
import HummingbirdTesting
import Testing

@testable import I2VApp
@testable import I2VCore
@testable import I2VGPUNode
@testable import I2VHTTP
@testable import I2VStorePostgres
@testable import I2VStoreSQLite
@testable import I2VWebhooks

/// The speed preset: every worker of a node gets the settings as they were set, and `/models` and `/ready` show what
/// the workers report they turned on.
@Suite struct SpeedPresetTests {
    static let speedVariables = ["I2V_SPEED", "I2V_COMPILE", "I2V_CACHE_THRESHOLD", "I2V_FP8", "I2V_LORA_PATH"]

    @Test func everyWorkerOfANodeGetsThePresetSettingsAsSet() throws {
        let directory = try TemporaryDirectory()
        let configuration = testConfiguration(
            dataDir: directory.url,
            [
                "i2v.speed": "turbo", "i2v.compile": "1", "i2v.cacheThreshold": "0.1", "i2v.fp8": "0",
                "i2v.loraPath": "loras/turbo.safetensors",
            ])
        let lora = URL(fileURLWithPath: "loras/turbo.safetensors").standardizedFileURL.path
        for device in ["cuda:0", "cuda:1"] {
            let environment = workerLaunch(configuration: configuration, checkpoint: "/m", device: device, slots: 1).environment
            #expect(environment["I2V_SPEED"] == "turbo")
            #expect(environment["I2V_COMPILE"] == "1")
            #expect(environment["I2V_CACHE_THRESHOLD"] == "0.1")
            #expect(environment["I2V_FP8"] == "0")
            #expect(environment["I2V_LORA_PATH"] == lora && lora.hasPrefix("/"))
        }
        // Unset, they stay unset: the worker's own defaults apply.
        let plain = workerLaunch(configuration: testConfiguration(dataDir: directory.url), checkpoint: "/m", device: "cpu", slots: 1)
        #expect(Self.speedVariables.filter { plain.environment[$0] != nil }.isEmpty)
    }

    @Test func modelsAndReadyShowWhatTheWorkerTurnedOn() async throws {
        let directory = try TemporaryDirectory()
        let speed = WorkerSpeed(preset: "turbo", compiled: true, lora: "turbo.safetensors", inferSteps: 4, guidanceScale: 1.0)
        let parts = try await buildNode(
            configuration: testConfiguration(dataDir: directory.url),
            overrides: AppOverrides(worker: ReportingWorker(speed: speed), catalog: ModelCatalog(models: [ServedModel(id: "m", nativeArea: 15_360)]))
        )
        let router = parts.router
        try await Application(router: router).test(.router) { client in
            let models = try await client.execute(uri: "/models", method: .get)
            let model = try #require((try models.jsonObject()["models"] as? [[String: Any]])?.first)
            #expect(try Self.served(model["speed"]) == speed)

            let ready = try await client.execute(uri: "/ready", method: .get)
            #expect(ready.status == .ok)
            let body = try ready.jsonObject()
            #expect(try Self.served(body["speed"]) == speed)
            let workers = try #require(body["workers"] as? [[String: Any]])
            #expect(try workers.map { try Self.served($0["speed"]) } == [speed])
        }
    }

    /// The `speed` object as served: every field present (off ones as null), decoded back.
    static func served(_ object: Any?) throws -> WorkerSpeed {
        let fields = try #require(object as? [String: Any])
        #expect(Set(fields.keys) == ["preset", "compiled", "cache_threshold", "fp8", "lora", "infer_steps", "guidance_scale"])
        #expect(fields["cache_threshold"] is NSNull)
        return try JSONDecoder().decode(WorkerSpeed.self, from: JSONSerialization.data(withJSONObject: fields))
    }
}

/// A ready worker that reports a speed preset; it runs nothing.
private struct ReportingWorker: InferenceWorker {
    let speed: WorkerSpeed

    func readiness() async -> WorkerReady? {
        WorkerReady(
            protocol: 1, model: WorkerModelInfo(id: "m", nativeArea: 15_360, sizeMultiple: 16, fps: 16), device: "cpu",
            dtype: "float32", slots: 1, memory: nil, speed: speed
        )
    }

    func start(_ job: WorkerJob) async throws -> AsyncStream<JobUpdate> { throw WorkerUnavailableError(reason: "runs nothing") }
    func cancel(taskID: String) async {}
    func restart(reason: String) async {}
}
