import Configuration
import Foundation
import Hummingbird
import HummingbirdTesting
import Metrics
import NIOCore
import Synchronization
import Testing

@testable import I2VApp
@testable import I2VCore
@testable import I2VGPUNode
@testable import I2VHTTP
@testable import I2VStorePostgres
@testable import I2VStoreSQLite

/// Whether a model takes LoRAs (`loras` in `GET /models`): false where only groups of devices serve it, as
/// announced, stored and merged across nodes.
@Suite struct LoRAGroupCatalogTests {
    @Test func aModelWithoutTheFieldTakesLoRAs() throws {
        // A node row written before the field: the JSON of the models column as older nodes stored it.
        let old = try WorkerNodeColumns.decodeModels(#"[{"id":"m","native_area":15360,"experts":2}]"#)
        #expect(old.map(\.takesLoRAs) == [true])
        let file = try JSONDecoder().decode(ServedModel.self, from: Data(#"{"id":"m","native_area":15360}"#.utf8))
        #expect(file.takesLoRAs)

        let groups = ServedModel(id: "m", nativeArea: 15_360, takesLoRAs: false)
        let stored = try WorkerNodeColumns.encodeModels([groups])
        #expect(stored.contains(#""loras":false"#), "\(stored)")
        #expect(try WorkerNodeColumns.decodeModels(stored) == [groups])
    }

    @Test func aModelTakesLoRAsWhereAnyWorkerOrNodeServingItIsNoGroup() {
        let groups = ServedModel(id: "m", nativeArea: 15_360, takesLoRAs: false)
        let plain = ServedModel(id: "m", nativeArea: 15_360)
        let other = ServedModel(id: "n", nativeArea: 921_600, takesLoRAs: false)
        func node(_ id: String, _ models: [ServedModel]) -> WorkerNode {
            WorkerNode(id: id, models: models, slots: 1, running: 0, startedAt: Date(), heartbeatAt: Date())
        }
        #expect(ModelCatalogSource.union([node("a", [groups, other])])?.models == [groups, other])
        let merged = ModelCatalogSource.union([node("a", [groups, other]), node("b", [plain])])
        #expect(merged?.models.map(\.id) == ["m", "n"])
        #expect(merged?.models.map(\.takesLoRAs) == [true, false])
        #expect(ServedModel.merging([plain, groups]).map(\.takesLoRAs) == [true])

        // A worker is a group by its configured devices, or by the ranks its readiness reports.
        let ready = WorkerReady(
            protocol: 1, model: WorkerModelInfo(id: "m", nativeArea: 15_360, sizeMultiple: 16, fps: 16), device: "cpu", dtype: "float32", slots: 1)
        var ranked = ready
        ranked.ranks = 2
        func snapshot(_ device: String, _ ready: WorkerReady?) -> WorkerPool.Snapshot {
            WorkerPool.Snapshot(
                index: 0, device: device, status: WorkerStatus(state: .ready, restarts: 0, pid: nil, problem: nil), running: 0, tasks: [], ready: ready)
        }
        #expect(snapshot("cpu", ready).served?.takesLoRAs == true)
        #expect(snapshot("cpu+cpu", ready).served?.takesLoRAs == false)
        #expect(snapshot("cpu", ranked).served?.takesLoRAs == false)
        #expect(snapshot("cpu", nil).served == nil)
    }

    /// A node of groups alone leaves LoRA tasks to another live node that takes them, and claims them itself
    /// only where none does.
    @Test func groupsAloneLeaveLoRATasksToANodeThatTakesThem() async {
        let pool = WorkerPool(
            members: [WorkerPool.Member(index: 0, device: "cpu+cpu", worker: FakeWorker(), slots: 1)], capacity: 1,
            metrics: ServiceMetrics(factory: NOOPMetricsHandler.instance))
        #expect(await pool.claimSet(for: pool.members[0], hold: .seconds(60), loRAsElsewhere: true) == "")
        #expect(await pool.claimSet(for: pool.members[0], hold: .seconds(60), loRAsElsewhere: false) == nil)
    }
}

/// A job with LoRAs for a model that only groups serve is refused at submit on both APIs, over real HTTP,
/// instead of failing on the group after it waited in the queue; a job without LoRAs still runs on the group,
/// and a node with a plain worker beside its group takes LoRA jobs.
@Suite struct LoRAGroupAPITests {
    static let model = LoRAAPITests.model
    static let refusal = "loras: the workers serving \(model) are groups of devices (I2V_DEVICES with +), which take no LoRAs"

    /// How often the LoRA URL was fetched.
    final class Hits: Sendable {
        let count = Atomic<Int>(0)
    }

    /// A node whose workers are `workers` on `devices`, with `style` in its catalog and LoRAs by URL on.
    static func withNode(
        devices: String, workers: [FakeWorker],
        _ body: @Sendable (_ client: any TestClientProtocol, _ catalog: URL) async throws -> Void
    ) async throws {
        let directory = try TemporaryDirectory()
        let catalog = try LoRAFiles.catalog(in: directory.url, [("style", LoRAFiles.lora())])
        let served = ServedModel(id: model, nativeArea: 15_360)
        for worker in workers { await worker.setModel(served) }
        let app = try await buildApplication(
            configuration: testConfiguration(
                dataDir: directory.url,
                [
                    "i2v.devices": .init(stringLiteral: devices), "i2v.loraDir": .init(stringLiteral: catalog.path), "i2v.loraMaxRank": 8,
                    "i2v.loraUrls": true,
                ]),
            role: .serve,
            overrides: AppOverrides(workers: workers, catalog: ModelCatalog(models: [served]))
        )
        try await app.test(.live) { client in try await body(client, catalog) }
    }

    static func listed(_ client: any TestClientProtocol) async throws -> [[String: Any]] {
        let response = try await client.execute(uri: "/models", method: .get)
        return try #require(try response.jsonObject()["models"] as? [[String: Any]], "\(String(buffer: response.body))")
    }

    @Test func aNodeOfGroupsAloneRefusesLoRAsAtSubmit() async throws {
        let hits = Hits()
        try await withImageServer({ router in
            router.get("lora/style.safetensors") { _, _ in
                hits.count.add(1, ordering: .relaxed)
                return Response(status: .ok, body: .init(byteBuffer: ByteBuffer(bytes: LoRAFiles.lora(rank: 3))))
            }
        }) { base in
            try await Self.withNode(devices: "cpu+cpu", workers: [FakeWorker()]) { client, catalog in
                let models = try await Self.listed(client)
                #expect(models.map { $0["loras"] as? Bool } == [false], "\(models)")

                let native = try await client.post(
                    "/video/submit", json: LoRAAPITests.submitBody(#"[{"name":"style"}]"#, imageURL: "\(base)/image.png"))
                #expect(native.status == .badRequest, "\(String(buffer: native.body))")
                #expect(native.reason() == Self.refusal)

                let byURL = try await client.post(
                    "/video/submit", json: LoRAAPITests.submitBody(#"[{"url":"\#(base)/lora/style.safetensors"}]"#, imageURL: "\(base)/image.png"))
                #expect(byURL.status == .badRequest && byURL.reason() == Self.refusal, "\(String(buffer: byURL.body))")
                #expect(hits.count.load(ordering: .relaxed) == 0, "the LoRA URL was downloaded")
                #expect(try FileManager.default.contentsOfDirectory(atPath: catalog.path) == ["style.safetensors"])

                let created = try await client.createVideo(json: [
                    "model": Self.model, "prompt": LoRAExpertAPITests.prompt, "input_reference": ["image_url": "\(base)/image.png"],
                    "loras": [["name": "style", "scale": 0.8]],
                ])
                #expect(created.status == .badRequest, "\(String(buffer: created.body))")
                let error = try created.openAIError()
                #expect(error["param"] as? String == "loras" && error["code"] as? String == "unusable_lora", "\(error)")
                #expect(error["message"] as? String == Self.refusal)

                // Nothing was queued by the refusals; a job without LoRAs runs on the group.
                let id = try await client.submit(imageURL: "\(base)/image.png", extra: #","model":"\#(Self.model)""#)
                #expect(try await client.waitFor(id, status: "Succeed")["status"] as? String == "Succeed")
                let plain = try await client.createVideo(json: [
                    "model": Self.model, "prompt": LoRAExpertAPITests.prompt, "input_reference": ["image_url": "\(base)/image.png"],
                ])
                #expect(plain.status == .ok, "\(String(buffer: plain.body))")
            }
        }
    }

    @Test func aPlainWorkerBesideAGroupTakesLoRAs() async throws {
        let group = FakeWorker()
        let plain = FakeWorker()
        try await withImageServer { base in
            try await Self.withNode(devices: "cpu+cpu,cpu", workers: [group, plain]) { client, _ in
                let models = try await Self.listed(client)
                #expect(models.map { $0["loras"] as? Bool } == [true], "\(models)")
                let id = try await client.submit(imageURL: "\(base)/image.png", extra: #","model":"\#(Self.model)","loras":[{"name":"style"}]"#)
                #expect(try await client.waitFor(id, status: "Succeed")["status"] as? String == "Succeed")
                let onPlain = await plain.started
                let onGroup = await group.started
                #expect(onPlain.contains(id) && !onGroup.contains(id), "plain ran \(onPlain), the group ran \(onGroup)")
                let created = try await client.createVideo(json: [
                    "model": Self.model, "prompt": LoRAExpertAPITests.prompt, "input_reference": ["image_url": "\(base)/image.png"],
                    "loras": [["name": "style"]],
                ])
                #expect(created.status == .ok, "\(String(buffer: created.body))")
            }
        }
    }

    /// A worker that reports ranks is a group too, whatever its configured device.
    @Test func aWorkerReportingRanksTakesNoLoRAs() async throws {
        let worker = FakeWorker()
        await worker.setRanks(2)
        try await withImageServer { base in
            try await Self.withNode(devices: "cpu", workers: [worker]) { client, _ in
                #expect(try await Self.listed(client).map { $0["loras"] as? Bool } == [false])
                let refused = try await client.post(
                    "/video/submit", json: LoRAAPITests.submitBody(#"[{"name":"style"}]"#, imageURL: "\(base)/image.png"))
                #expect(refused.status == .badRequest && refused.reason() == Self.refusal, "\(String(buffer: refused.body))")
            }
        }
    }
}

/// The same across a fleet: each node's `loras` is stored with its heartbeat, and an API node refuses LoRAs for
/// a model that only groups serve until a node with a plain worker for it is live.
@Suite struct LoRAGroupFleetTests {
    static let model = LoRAAPITests.model

    static func node(_ id: String, takesLoRAs: Bool) -> WorkerNode {
        WorkerNode(
            id: id, models: [ServedModel(id: model, nativeArea: 15_360, takesLoRAs: takesLoRAs)], slots: 1, running: 0, startedAt: Date(),
            heartbeatAt: Date(), devices: takesLoRAs ? ["cuda:0"] : ["cuda:0+cuda:1"]
        )
    }

    @Test(arguments: StoreKind.allCases)
    func theRegistryKeepsWhetherAModelTakesLoRAs(_ kind: StoreKind) async throws {
        try await withStore(kind) { store in
            try await store.recordHeartbeat(Self.node("gpu-groups", takesLoRAs: false))
            try await store.recordHeartbeat(Self.node("gpu-plain", takesLoRAs: true))
            let nodes = try await store.workerNodes()
            #expect(Dictionary(uniqueKeysWithValues: nodes.map { ($0.id, $0.models.map(\.takesLoRAs)) }) == ["gpu-groups": [false], "gpu-plain": [true]])
        }
    }

    @Test func anAPINodeRefusesLoRAsUntilANodeThatTakesThemIsLive() async throws {
        try await withFreshPostgresDatabase { endpoint in
            let url = try TestCluster.url(database: endpoint.database)
            let directory = try TemporaryDirectory()
            let catalog = try LoRAFiles.catalog(in: directory.url, [("style", LoRAFiles.lora())])
            try await withPostgresStore(endpoint) { try await $0.recordHeartbeat(Self.node("gpu-groups", takesLoRAs: false)) }
            let api = try await makeTestApp(
                dataDir: directory.url, worker: FakeWorker(), role: .api,
                ["i2v.databaseUrl": .init(stringLiteral: url), "i2v.nodeId": "front-1", "i2v.loraDir": .init(stringLiteral: catalog.path)]
            )
            try await withImageServer { base in
                try await api.test(.live) { client in
                    #expect(try await LoRAGroupAPITests.listed(client).map { $0["loras"] as? Bool } == [false])
                    let body = LoRAAPITests.submitBody(#"[{"name":"style"}]"#, imageURL: "\(base)/image.png")
                        .replacingOccurrences(of: #""loras""#, with: #""model":"\#(Self.model)","loras""#)
                    let refused = try await client.post("/video/submit", json: body)
                    #expect(refused.status == .badRequest && refused.reason() == LoRAGroupAPITests.refusal, "\(String(buffer: refused.body))")
                    let created = try await client.createVideo(json: [
                        "model": Self.model, "prompt": LoRAExpertAPITests.prompt, "input_reference": ["image_url": "\(base)/image.png"],
                        "loras": [["name": "style"]],
                    ])
                    #expect(created.status == .badRequest, "\(String(buffer: created.body))")
                    #expect(try created.openAIError()["param"] as? String == "loras")

                    // A node with a plain worker joins: the model takes LoRAs, and the same submit is queued.
                    try await withPostgresStore(endpoint) { try await $0.recordHeartbeat(Self.node("gpu-plain", takesLoRAs: true)) }
                    // The API node reads the registry through a short cache.
                    await eventually("the plain node's model listed as taking LoRAs") {
                        (try? await LoRAGroupAPITests.listed(client).map { $0["loras"] as? Bool }) == [true]
                    }
                    let accepted = try await client.post("/video/submit", json: body)
                    #expect(accepted.status == .accepted, "\(String(buffer: accepted.body))")
                }
            }
        }
    }

    /// The queue is the fleet's: a LoRA task accepted because another node takes LoRAs is not claimed (and
    /// failed) by a node of groups alone, which still runs the tasks without LoRAs queued after it; once no
    /// live node takes LoRAs, the group claims it.
    @Test func aNodeOfGroupsAloneLeavesLoRATasksToANodeThatTakesThem() async throws {
        try await withFreshPostgresDatabase { endpoint in
            let url = try TestCluster.url(database: endpoint.database)
            let directory = try TemporaryDirectory()
            let catalog = try LoRAFiles.catalog(in: directory.url, [("style", LoRAFiles.lora())])
            // A node with a plain worker for the model, heard from but running no dispatcher here.
            try await withPostgresStore(endpoint) { try await $0.recordHeartbeat(Self.node("gpu-plain", takesLoRAs: true)) }
            let shared: [String: ConfigValue] = ["i2v.databaseUrl": .init(stringLiteral: url), "i2v.loraDir": .init(stringLiteral: catalog.path)]
            let group = FakeWorker()
            await group.setModel(ServedModel(id: Self.model, nativeArea: 15_360))
            let groups = try await buildApplication(
                configuration: testConfiguration(
                    dataDir: directory.url.appending(path: "groups"),
                    shared.merging(["i2v.devices": "cpu+cpu", "i2v.nodeId": "gpu-groups"]) { _, own in own }),
                role: .worker,
                overrides: AppOverrides(workers: [group], catalog: ModelCatalog(models: [ServedModel(id: Self.model, nativeArea: 15_360)]))
            )
            let api = try await makeTestApp(
                dataDir: directory.url.appending(path: "api"), worker: FakeWorker(), role: .api,
                shared.merging(["i2v.nodeId": "front-1"]) { _, own in own }
            )
            try await withImageServer { base in
                try await groups.test(.live) { _ in
                    try await api.test(.live) { client in
                        let withLoRAs = try await client.submit(
                            imageURL: "\(base)/image.png", extra: #","model":"\#(Self.model)","loras":[{"name":"style"}]"#)
                        let without = try await client.submit(imageURL: "\(base)/image.png", extra: #","model":"\#(Self.model)""#)
                        #expect(try await client.waitFor(without, status: "Succeed")["status"] as? String == "Succeed")
                        #expect(try await client.status(withLoRAs)["status"] as? String == "InQueue")
                        #expect(!(await group.started.contains(withLoRAs)), "the group claimed the LoRA task")

                        try await withPostgresStore(endpoint) { try await $0.removeWorkerNode(id: "gpu-plain") }
                        await eventually("the group claims the LoRA task once no live node takes LoRAs") {
                            await group.started.contains(withLoRAs)
                        }
                    }
                }
            }
        }
    }
}
