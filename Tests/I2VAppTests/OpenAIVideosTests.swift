import AsyncHTTPClient
import Foundation
import Hummingbird
import HummingbirdTesting
import MultipartKit
import NIOCore
import Testing

@testable import I2VApp
@testable import I2VCore
@testable import I2VGPUNode
@testable import I2VHTTP
@testable import I2VStorePostgres
@testable import I2VStoreSQLite
@testable import I2VWebhooks
@testable import ImageIntake

/// `/v1/videos`, OpenAI's videos API, with a fake worker: the same tasks as the seed's API, OpenAI's objects
/// and error shape, uploads under the intake's checks, pages, deletes and content. (The official SDK drives a
/// real server in tests/clients.)
@Suite struct OpenAIVideosTests {
    static let prompt = "A dancing cat in the style of Van Gogh"

    // MARK: Create

    @Test func anUploadedFileMakesATaskThatBothAPIsSee() async throws {
        let directory = try TemporaryDirectory()
        let app = try await makeTestApp(dataDir: directory.url, worker: FakeWorker())
        try await app.test(.router) { client in
            let created = try await client.createVideo(form: [
                .text("prompt", Self.prompt), .text("seconds", "2"), .text("num_inference_steps", "20"),
                .file("input_reference", fixtureImage, filename: "cat.png", contentType: "image/png"),
            ])
            #expect(created.status == .ok, "\(String(buffer: created.body))")
            let video = try created.jsonObject()
            let videoID = try #require(video["id"] as? String)
            #expect(videoID.hasPrefix("video_") && videoID.count == 38)
            #expect(video["object"] as? String == "video")
            #expect(["queued", "in_progress"].contains(video["status"] as? String))
            #expect(video["model"] as? String == "test-model")
            #expect(video["prompt"] as? String == Self.prompt)
            // 2 s at 16 fps: 32 frames asked, 33 made (4k+1); the 320×180 upload planned at 160×80.
            #expect(video["num_frames"] as? Int == 33)
            #expect(video["seconds"] as? String == "2.06")
            #expect(video["size"] as? String == "160x80")
            #expect(video["error"] is NSNull)

            // The seed's API sees the same task under its requestId, and runs it to the end.
            let requestID = String(videoID.dropFirst("video_".count))
            let done = try await client.waitFor(requestID, status: "Succeed")
            #expect(done["status"] as? String == "Succeed")

            let retrieved = try await client.v1(.get, "/v1/videos/\(videoID)")
            #expect(retrieved.status == .ok)
            let completed = try retrieved.jsonObject()
            #expect(completed["status"] as? String == "completed")
            #expect(completed["progress"] as? Int == 100)
            let finished = try #require(completed["completed_at"] as? Int)
            #expect(completed["expires_at"] as? Int == finished + 3600)
            #expect(completed["queue_position"] is NSNull)
        }
    }

    @Test func aTaskSubmittedThroughTheSeedAPIIsAVideoOnV1() async throws {
        let directory = try TemporaryDirectory()
        let app = try await makeTestApp(dataDir: directory.url, worker: FakeWorker(ready: false))
        try await withImageServer { base in
            try await app.test(.router) { client in
                let id = try await client.submit(imageURL: "\(base)/image.png", extra: #","seed":42"#, frames: 50)
                let response = try await client.v1(.get, "/v1/videos/video_\(id)")
                #expect(response.status == .ok)
                let video = try response.jsonObject()
                #expect(video["id"] as? String == "video_\(id)")
                #expect(video["status"] as? String == "queued")
                #expect(video["queue_position"] as? Int == 1)
                #expect(video["seed"] as? Int == 42)
                #expect(video["num_frames"] as? Int == 49)
                // Another key's task is missing on both APIs alike.
                #expect(try await client.v1(.get, "/v1/videos/video_\(id)", key: TestKeys.bob).status == .notFound)
            }
        }
    }

    @Test func jsonTakesAnHTTPURLOrADataURL() async throws {
        let directory = try TemporaryDirectory()
        let app = try await makeTestApp(dataDir: directory.url, worker: FakeWorker(ready: false))
        try await withImageServer { base in
            try await app.test(.router) { client in
                let byURL = try await client.createVideo(json: [
                    "prompt": Self.prompt, "input_reference": ["image_url": "\(base)/image.png"], "size": "480x832", "seed": 7,
                ])
                #expect(byURL.status == .ok, "\(String(buffer: byURL.body))")
                #expect(try byURL.jsonObject()["size"] as? String == "480x832")
                #expect(try byURL.jsonObject()["seed"] as? Int == 7)

                let dataURL = "data:image/png;base64," + Data(fixtureImage).base64EncodedString()
                let byData = try await client.createVideo(json: ["prompt": Self.prompt, "input_reference": ["image_url": dataURL], "seconds": 3])
                #expect(byData.status == .ok, "\(String(buffer: byData.body))")
                #expect(try byData.jsonObject()["num_frames"] as? Int == 49)

                // What the official SDK sends for extra_body={"input_reference": {"image_url": …}}.
                let byFormField = try await client.createVideo(form: [
                    .text("prompt", Self.prompt), .text("input_reference[image_url]", "\(base)/image.png"), .text("num_frames", "24"),
                ])
                #expect(byFormField.status == .ok, "\(String(buffer: byFormField.body))")
                #expect(try byFormField.jsonObject()["num_frames"] as? Int == 25)
            }
        }
    }

    @Test func badRequestsAre400InOpenAIShapeNamingTheField() async throws {
        let directory = try TemporaryDirectory()
        let app = try await makeTestApp(dataDir: directory.url, worker: FakeWorker(ready: false))
        try await withImageServer { base in
            try await app.test(.router) { client in
                let image: [String: Any] = ["image_url": "\(base)/image.png"]
                let cases: [(String, [String: Any], String)] = [
                    ("seconds 12 is 192 frames", ["prompt": Self.prompt, "input_reference": image, "seconds": "12"], "seconds"),
                    ("seconds not a number", ["prompt": Self.prompt, "input_reference": image, "seconds": "long"], "seconds"),
                    ("short prompt", ["prompt": "short", "input_reference": image], "prompt"),
                    ("no prompt", ["input_reference": image], "prompt"),
                    ("OpenAI's own size", ["prompt": Self.prompt, "input_reference": image, "size": "1280x720"], "size"),
                    ("unknown model", ["prompt": Self.prompt, "input_reference": image, "model": "sora-2"], "model"),
                    ("steps beyond 100", ["prompt": Self.prompt, "input_reference": image, "num_inference_steps": 101], "num_inference_steps"),
                    ("no image", ["prompt": Self.prompt], "input_reference"),
                    ("a file id", ["prompt": Self.prompt, "input_reference": ["file_id": "file_123"]], "input_reference"),
                    ("an ftp URL", ["prompt": Self.prompt, "input_reference": ["image_url": "ftp://example.com/a.png"]], "input_reference.image_url"),
                ]
                for (name, body, param) in cases {
                    let response = try await client.createVideo(json: body)
                    #expect(response.status == .badRequest, "\(name): \(response.status)")
                    let error = try response.openAIError()
                    #expect(error["type"] as? String == "invalid_request_error", "\(name)")
                    #expect(error["param"] as? String == param, "\(name): \(error)")
                    #expect((error["message"] as? String)?.isEmpty == false, "\(name)")
                }
                // num_frames wins over seconds.
                let both = try await client.createVideo(json: ["prompt": Self.prompt, "input_reference": image, "seconds": "12", "num_frames": 24])
                #expect(both.status == .ok)

                let notJSON = try await client.execute(
                    uri: "/v1/videos", method: .post,
                    headers: [.authorization: "Bearer \(TestKeys.alice)", .contentType: "application/json"],
                    body: ByteBuffer(string: "{nope")
                )
                #expect(notJSON.status == .badRequest)
                #expect(try notJSON.openAIError()["type"] as? String == "invalid_request_error")
                let plainText = try await client.execute(
                    uri: "/v1/videos", method: .post,
                    headers: [.authorization: "Bearer \(TestKeys.alice)", .contentType: "text/plain"],
                    body: ByteBuffer(string: "a video please")
                )
                #expect(plainText.status == .unsupportedMediaType)
                #expect(try plainText.openAIError()["code"] as? String == "unsupported_media_type")
            }
        }
    }

    @Test func authUnknownIDsAndWrongMethodsAnswerInOpenAIShape() async throws {
        let directory = try TemporaryDirectory()
        let app = try await makeTestApp(dataDir: directory.url, worker: FakeWorker(ready: false))
        try await app.test(.router) { client in
            let wrongKey = try await client.v1(.get, "/v1/videos", key: "not-a-key")
            #expect(wrongKey.status == .unauthorized)
            #expect(wrongKey.headers[.wwwAuthenticate] == "Bearer")
            #expect(try wrongKey.openAIError()["code"] as? String == "invalid_api_key")
            let noKey = try await client.execute(uri: "/v1/videos/video_\(String(repeating: "a", count: 32))", method: .get)
            #expect(noKey.status == .unauthorized)
            #expect(try noKey.openAIError()["type"] as? String == "invalid_request_error")

            for path in ["/v1/videos/video_\(String(repeating: "a", count: 32))", "/v1/videos/not-a-video", "/v1/videos/\(String(repeating: "a", count: 32))"] {
                let unknown = try await client.v1(.get, path)
                #expect(unknown.status == .notFound, "\(path)")
                #expect(try unknown.openAIError()["type"] as? String == "invalid_request_error", "\(path)")
                #expect(try await client.v1(.delete, path).status == .notFound, "\(path)")
                #expect(try await client.v1(.get, path + "/content").status == .notFound, "\(path)")
            }
            let wrongMethod = try await client.v1(.put, "/v1/videos/video_\(String(repeating: "a", count: 32))")
            #expect(wrongMethod.status == .methodNotAllowed)
            #expect(wrongMethod.headers[.allow] == "DELETE, GET")
            #expect(try wrongMethod.openAIError()["code"] as? String == "method_not_allowed")
            // The seed's routes keep their own error body.
            let seed = try await client.post("/video/status", key: "not-a-key", json: #"{"requestId":"x"}"#)
            #expect(seed.failureReason == "invalid API key")
        }
    }

    @Test func aKeyOverItsRateOrAFullQueueIs429WithRetryAfter() async throws {
        let directory = try TemporaryDirectory()
        let app = try await makeTestApp(
            dataDir: directory.url, worker: FakeWorker(ready: false), ["i2v.submitsPerMinute": 2, "i2v.maxQueued": 1]
        )
        try await withImageServer { base in
            try await app.test(.router) { client in
                let body: [String: Any] = ["prompt": Self.prompt, "input_reference": ["image_url": "\(base)/image.png"]]
                #expect(try await client.createVideo(json: body).status == .ok)
                let full = try await client.createVideo(json: body)
                #expect(full.status == .tooManyRequests)
                #expect(full.headers[.retryAfter] != nil)
                #expect(try full.openAIError()["code"] as? String == "queue_full")
                let limited = try await client.createVideo(json: body)
                #expect(limited.status == .tooManyRequests)
                #expect(Int(limited.headers[.retryAfter] ?? "") ?? 0 >= 1)
                let error = try limited.openAIError()
                #expect(error["type"] as? String == "rate_limit_error")
                #expect(error["code"] as? String == "rate_limit_exceeded")
            }
        }
    }

    // MARK: Uploads go through the intake's checks

    @Test func uploadsPassThePixelCapFormatsAndAspectOfDownloads() async throws {
        let directory = try TemporaryDirectory()
        let app = try await makeTestApp(dataDir: directory.url, worker: FakeWorker(ready: false))
        try await app.test(.router) { client in
            let cases: [(String, [UInt8], String)] = [
                ("a pixel bomb", IntakeAPI.bombPNG, "invalid_image_too_many_pixels"),
                ("not an image", Array("just some text, not a picture".utf8), "invalid_image_not_an_image"),
                ("10:1", IntakeAPI.redBlue(width: 1000, height: 100).bytes, "invalid_image_aspect_ratio"),
            ]
            for (name, bytes, code) in cases {
                let response = try await client.createVideo(form: [
                    .text("prompt", Self.prompt), .file("input_reference", bytes, filename: "x.png", contentType: "image/png"),
                ])
                #expect(response.status == .badRequest, "\(name)")
                let error = try response.openAIError()
                #expect(error["param"] as? String == "input_reference", "\(name)")
                #expect(error["code"] as? String == code, "\(name): \(error)")
            }
            #expect(try FileManager.default.contentsOfDirectory(atPath: directory.url.appending(path: "inputs").path).isEmpty)
            let metrics = String(buffer: try await client.execute(uri: "/metrics", method: .get).body)
            #expect(metrics.contains(#"i2v_image_failures_total{cause="tooManyPixels"} 1"#))
        }
    }

    /// The client sends one byte more than the cap and then nothing: the 400 comes back while the body is
    /// still open, so the cap is applied as the bytes arrive, not after the whole body.
    @Test func anUploadOverTheByteCapIsRefusedWhileItStreams() async throws {
        let directory = try TemporaryDirectory()
        let cap = 4096
        let app = try await makeTestApp(dataDir: directory.url, worker: FakeWorker(ready: false), ["i2v.imageMaxBytes": .init(integerLiteral: cap)])
        try await app.test(.live) { client in
            let boundary = "i2v-test-boundary"
            let head =
                "--\(boundary)\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\n\(Self.prompt)\r\n"
                + "--\(boundary)\r\nContent-Disposition: form-data; name=\"input_reference\"; filename=\"big.png\"\r\n"
                + "Content-Type: image/png\r\n\r\n"
            let (chunks, continuation) = AsyncStream.makeStream(of: ByteBuffer.self)
            continuation.yield(ByteBuffer(string: head))
            continuation.yield(ByteBuffer(bytes: [UInt8](repeating: 0x41, count: cap + 1)))
            defer { continuation.finish() }
            var request = HTTPClientRequest(url: "http://127.0.0.1:\(client.port!)/v1/videos")
            request.method = .POST
            request.headers.add(name: "Authorization", value: "Bearer \(TestKeys.alice)")
            request.headers.add(name: "Content-Type", value: "multipart/form-data; boundary=\(boundary)")
            request.body = .stream(chunks, length: .unknown)
            let response = try await HTTPClient.shared.execute(request, timeout: .seconds(60))
            #expect(response.status == .badRequest)
            let body = try await response.body.collect(upTo: 64 * 1024)
            let error = try #require((try JSONSerialization.jsonObject(with: Data(buffer: body)) as? [String: Any])?["error"] as? [String: Any])
            #expect(error["code"] as? String == "invalid_image_too_large")
            #expect(error["message"] as? String == "image is larger than \(cap) bytes")
        }
    }

    @Test func formsOverTheirCapsAre413() async throws {
        let directory = try TemporaryDirectory()
        let app = try await makeTestApp(
            dataDir: directory.url, worker: FakeWorker(ready: false), ["i2v.maxBodyBytes": 1024, "i2v.imageMaxBytes": 4096]
        )
        try await app.test(.router) { client in
            let longField = try await client.createVideo(form: [
                .text("prompt", Self.prompt), .text("negative_prompt", String(repeating: "n", count: 2000)),
                .file("input_reference", fixtureImage, filename: "cat.png", contentType: "image/png"),
            ])
            #expect(longField.status == .contentTooLarge)
            #expect(try longField.openAIError()["message"] as? String == "the form's fields are larger than 1024 bytes")
            // Framing the parser skips (a preamble with no boundary in it) is capped too.
            let endless = try await client.execute(
                uri: "/v1/videos", method: .post,
                headers: [.authorization: "Bearer \(TestKeys.alice)", .contentType: "multipart/form-data; boundary=never-sent"],
                body: ByteBuffer(repeating: 0x2d, count: 2 * 4096 + 1024 + 64 * 1024 + 1)
            )
            #expect(endless.status == .contentTooLarge)
            #expect(try endless.openAIError()["code"] as? String == "request_too_large")
        }
    }

    // MARK: List

    @Test func listPagesThroughTheKeysOwnVideosWithACursor() async throws {
        let directory = try TemporaryDirectory()
        let app = try await makeTestApp(dataDir: directory.url, worker: FakeWorker(ready: false))
        try await withImageServer { base in
            try await app.test(.router) { client in
                var ids: [String] = []
                for _ in 0..<3 { ids.append("video_" + (try await client.submit(imageURL: "\(base)/image.png"))) }
                _ = try await client.submit(imageURL: "\(base)/image.png", key: TestKeys.bob)

                let first = try await client.v1(.get, "/v1/videos?limit=2").jsonObject()
                #expect(first["object"] as? String == "list")
                let firstData = try #require(first["data"] as? [[String: Any]])
                #expect(firstData.compactMap { $0["id"] as? String } == [ids[2], ids[1]])
                #expect(first["first_id"] as? String == ids[2])
                #expect(first["last_id"] as? String == ids[1])
                #expect(first["has_more"] as? Bool == true)
                #expect(firstData.compactMap { $0["queue_position"] as? Int } == [3, 2])

                let second = try await client.v1(.get, "/v1/videos?limit=2&after=\(ids[1])").jsonObject()
                #expect((second["data"] as? [[String: Any]])?.compactMap { $0["id"] as? String } == [ids[0]])
                #expect(second["has_more"] as? Bool == false)

                let ascending = try await client.v1(.get, "/v1/videos?order=asc").jsonObject()
                #expect((ascending["data"] as? [[String: Any]])?.compactMap { $0["id"] as? String } == ids)

                for query in ["limit=0", "limit=101", "order=up", "after=nope", "after=", "after=video_\(String(repeating: "f", count: 32))"] {
                    let refused = try await client.v1(.get, "/v1/videos?\(query)")
                    #expect(refused.status == .badRequest, "\(query)")
                    #expect(try refused.openAIError()["param"] as? String == String(query.prefix { $0 != "=" }), "\(query)")
                }
            }
        }
    }

    // MARK: Delete

    @Test func deletingAQueuedOrFinishedVideoRemovesItAndItsFiles() async throws {
        let directory = try TemporaryDirectory()
        let worker = FakeWorker(ready: false)
        let app = try await makeTestApp(dataDir: directory.url, worker: worker)
        try await withImageServer { base in
            try await app.test(.router) { client in
                let queued = try await client.submit(imageURL: "\(base)/image.png")
                let input = directory.url.appending(path: "inputs/\(queued).png")
                #expect(FileManager.default.fileExists(atPath: input.path))
                let deleted = try await client.v1(.delete, "/v1/videos/video_\(queued)")
                #expect(deleted.status == .ok)
                let body = try deleted.jsonObject()
                #expect(body["id"] as? String == "video_\(queued)")
                #expect(body["object"] as? String == "video.deleted")
                #expect(body["deleted"] as? Bool == true)
                #expect(try await client.v1(.get, "/v1/videos/video_\(queued)").status == .notFound)
                #expect(try await client.post("/video/status", json: #"{"requestId":"\#(queued)"}"#).status == .notFound)
                #expect(!FileManager.default.fileExists(atPath: input.path))
                #expect(try await client.v1(.delete, "/v1/videos/video_\(queued)").status == .notFound)

                await worker.setReady(true)
                let finished = try await client.submit(imageURL: "\(base)/image.png")
                let done = try await client.waitFor(finished, status: "Succeed")
                let url = try #require(((done["results"] as? [String: Any])?["videos"] as? [[String: Any]])?.first?["url"] as? String)
                let video = directory.url.appending(path: "videos/\(URL(string: url)!.lastPathComponent)")
                #expect(FileManager.default.fileExists(atPath: video.path))
                #expect(try await client.v1(.delete, "/v1/videos/video_\(finished)").status == .ok)
                #expect(!FileManager.default.fileExists(atPath: video.path))
                #expect(try await client.post("/video/status", json: #"{"requestId":"\#(finished)"}"#).status == .notFound)
            }
        }
    }

    @Test func deletingARunningVideoStopsItsJobAndHidesIt() async throws {
        let directory = try TemporaryDirectory()
        let worker = FakeWorker(stepDuration: .milliseconds(200))
        let app = try await makeTestApp(dataDir: directory.url, worker: worker)
        try await withImageServer { base in
            try await app.test(.router) { client in
                let id = try await client.submit(imageURL: "\(base)/image.png")
                let running = try await client.waitFor(id, status: "InProgress")
                #expect(running["status"] as? String == "InProgress")
                #expect(try await client.v1(.get, "/v1/videos/video_\(id)").jsonObject()["status"] as? String == "in_progress")

                #expect(try await client.v1(.delete, "/v1/videos/video_\(id)").status == .ok)
                #expect(try await client.v1(.get, "/v1/videos/video_\(id)").status == .notFound)
                #expect(try await client.post("/video/status", json: #"{"requestId":"\#(id)"}"#).status == .notFound)
                #expect(try await client.post("/video/cancel", json: #"{"requestId":"\#(id)"}"#).status == .notFound)
                let listed = try await client.v1(.get, "/v1/videos").jsonObject()["data"] as? [Any]
                #expect(listed?.isEmpty == true)
                // The cancel reached the worker, which stopped the job rather than finishing it.
                await eventually("the worker stops the deleted job") {
                    let cancelled = await worker.cancelled.contains(id)
                    let running = await worker.running.contains(id)
                    return cancelled && !running
                }
                #expect(await worker.started == [id])
            }
        }
    }

    // MARK: Content

    @Test func contentIsTheMP4WithRangesAndAThumbnailOfItsFirstFrame() async throws {
        let directory = try TemporaryDirectory()
        let app = try await makeTestApp(dataDir: directory.url, worker: FakeWorker(stepDuration: .milliseconds(50)))
        try await withImageServer { base in
            try await app.test(.router) { client in
                let id = try await client.submit(imageURL: "\(base)/image.png")
                let early = try await client.v1(.get, "/v1/videos/video_\(id)/content")
                #expect(early.status == .notFound)
                #expect(try early.openAIError()["code"] as? String == "video_not_ready")

                let done = try await client.waitFor(id, status: "Succeed")
                let url = try #require(((done["results"] as? [String: Any])?["videos"] as? [[String: Any]])?.first?["url"] as? String)
                let file = directory.url.appending(path: "videos/\(URL(string: url)!.lastPathComponent)")
                let video = try await client.v1(.get, "/v1/videos/video_\(id)/content")
                #expect(video.status == .ok)
                #expect(video.headers[.contentType] == "video/mp4")
                #expect(Data(buffer: video.body) == (try Data(contentsOf: file)))
                let range = try await client.execute(
                    uri: "/v1/videos/video_\(id)/content?variant=video", method: .get,
                    headers: [.authorization: "Bearer \(TestKeys.alice)", .range: "bytes=0-3"]
                )
                #expect(range.status == .partialContent)
                #expect(Data(buffer: range.body) == (try Data(contentsOf: file)).prefix(4))

                let spritesheet = try await client.v1(.get, "/v1/videos/video_\(id)/content?variant=spritesheet")
                #expect(spritesheet.status == .badRequest)
                #expect(try spritesheet.openAIError()["param"] as? String == "variant")

                // The fake worker's file is not a video; a real one (160×96, 17 frames) takes its place.
                if let ffmpeg = IntakeAPI.FFmpeg.path {
                    let (_, status) = try await runTool(
                        ffmpeg,
                        [
                            "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=160x96:rate=16", "-frames:v", "17",
                            "-c:v", "libx264", "-pix_fmt", "yuv420p", "-f", "mp4", file.path,
                        ])
                    try #require(status == 0)
                    let thumbnail = try await client.v1(.get, "/v1/videos/video_\(id)/content?variant=thumbnail")
                    #expect(thumbnail.status == .ok)
                    #expect(thumbnail.headers[.contentType] == "image/jpeg")
                    let still = directory.url.appending(path: "thumbnail.jpg")
                    try Data(buffer: thumbnail.body).write(to: still)
                    let probe = try await EndToEnd.ffprobe(still)
                    #expect(probe.codec == "mjpeg")
                    #expect(probe.width == 160 && probe.height == 96)
                } else {
                    #expect(!IntakeAPI.FFmpeg.usable, "ffmpeg is required under I2V_TEST_STRICT=1")
                }

                try FileManager.default.removeItem(at: file)
                let gone = try await client.v1(.get, "/v1/videos/video_\(id)/content")
                #expect(gone.status == .notFound)
                #expect(try gone.openAIError()["code"] as? String == "video_expired")
            }
        }
    }

    // MARK: The store's listing and deleting

    @Test(arguments: StoreKind.allCases)
    func theStoresPageAndDeleteAnOwnersTasks(_ kind: StoreKind) async throws {
        try await withStore(kind) { store in
            let listing = try #require(store as? any TaskListing)
            for id in ["a1", "a2", "a3"] { try await store.enqueue(TaskStoreTests.record(id, owner: "alice"), maxQueued: 10) }
            try await store.enqueue(TaskStoreTests.record("b1", owner: "bob"), maxQueued: 10)
            func ids(_ result: TaskListingResult) -> [String] {
                guard case .page(let tasks, _) = result else { return [] }
                return tasks.map(\.task.id)
            }

            let first = try await listing.listTasks(ownerKeyHash: "alice", after: nil, limit: 2, order: .descending)
            guard case .page(let newest, hasMore: true) = first else {
                Issue.record("expected a first page with more after it: \(first)")
                return
            }
            #expect(newest.map(\.task.id) == ["a3", "a2"])
            #expect(newest.map(\.queuePosition) == [3, 2])
            let second = try await listing.listTasks(ownerKeyHash: "alice", after: "a2", limit: 2, order: .descending)
            #expect(second == .page([ListedTask(task: try #require(try await store.task(id: "a1")), queuePosition: 1)], hasMore: false))
            #expect(ids(try await listing.listTasks(ownerKeyHash: "alice", after: nil, limit: 10, order: .ascending)) == ["a1", "a2", "a3"])
            #expect(ids(try await listing.listTasks(ownerKeyHash: "alice", after: "a1", limit: 10, order: .ascending)) == ["a2", "a3"])
            #expect(try await listing.listTasks(ownerKeyHash: "alice", after: "b1", limit: 10, order: .ascending) == .unknownCursor)
            #expect(try await listing.listTasks(ownerKeyHash: "alice", after: "zz", limit: 10, order: .ascending) == .unknownCursor)

            // A running task is disowned and its cancel recorded; the node running it still finds the row.
            let running = try await store.claimNext(node: TaskStoreTests.node, lease: TaskStoreTests.lease)
            #expect(running?.id == "a1")
            guard case .stopping(let stopping) = try await listing.deleteTask(id: "a1", ownerKeyHash: "alice") else {
                Issue.record("a running task should be stopping")
                return
            }
            #expect(stopping.id == "a1")
            #expect(try await store.cancelRequested(among: ["a1"]) == ["a1"])
            #expect(try await store.task(id: "a1")?.ownerKeyHash == TaskListingOwner.none)
            #expect(try await store.cancel(id: "a1", ownerKeyHash: "alice") == .notFound)
            #expect(ids(try await listing.listTasks(ownerKeyHash: "alice", after: nil, limit: 10, order: .ascending)) == ["a2", "a3"])

            guard case .removed(let removed) = try await listing.deleteTask(id: "a2", ownerKeyHash: "alice") else {
                Issue.record("a queued task should be removed")
                return
            }
            #expect(removed.status == .inQueue)
            #expect(try await store.task(id: "a2") == nil)
            #expect(try await listing.deleteTask(id: "b1", ownerKeyHash: "alice") == .notFound)
            #expect(try await store.task(id: "b1") != nil)
        }
    }

    // MARK: Pieces

    @Test func theMultipartBoundaryIsReadFromTheContentType() {
        #expect(VideoFormReader.boundary(contentType: "multipart/form-data; boundary=abc123") == "abc123")
        #expect(VideoFormReader.boundary(contentType: #"Multipart/Form-Data;charset=utf-8; Boundary="a b:c""#) == "a b:c")
        #expect(VideoFormReader.boundary(contentType: "multipart/form-data") == nil)
        #expect(VideoFormReader.boundary(contentType: "multipart/form-data; boundary=") == nil)
        #expect(VideoFormReader.boundary(contentType: "multipart/mixed; boundary=abc") == nil)
        #expect(VideoFormReader.boundary(contentType: "application/json") == nil)
    }

    @Test func dataURLsAreDecodedUnderTheByteCap() throws {
        let png = "data:image/png;base64," + Data(fixtureImage).base64EncodedString()
        #expect(try ImageUpload.decodeDataURL(png, maxBytes: 1 << 20) == fixtureImage)
        #expect(try ImageUpload.decodeDataURL("DATA:image/png;BASE64," + Data(fixtureImage).base64EncodedString(), maxBytes: 1 << 20) == fixtureImage)
        let causes: [(String, Int, ImageIntakeError.Cause)] = [
            (png, fixtureImage.count - 1, .tooLarge),
            ("data:text/plain;base64,aGVsbG8=", 1 << 20, .notAnImage),
            ("data:image/png,%89PNG", 1 << 20, .invalidURL),
            ("data:image/png;base64,", 1 << 20, .notAnImage),
            ("data:image/png;base64", 1 << 20, .invalidURL),
        ]
        for (url, cap, cause) in causes {
            #expect(throws: ImageIntakeError.self, "\(url.prefix(30))") { try ImageUpload.decodeDataURL(url, maxBytes: cap) }
            do {
                _ = try ImageUpload.decodeDataURL(url, maxBytes: cap)
            } catch {
                #expect(error.cause == cause, "\(url.prefix(30))")
            }
        }
    }

    @Test func theVideoObjectFollowsTheTaskThroughItsStates() {
        var task = TaskStoreTests.record("a")
        task.parameters.numFrames = 81
        task.parameters.inferSteps = 30
        let created = Date(timeIntervalSince1970: 1_000)
        task.createdAt = created
        var video = VideoObject(task: task, queuePosition: 4, fps: 16, videoTTL: .seconds(60))
        #expect((video.status, video.progress, video.queuePosition, video.seconds) == ("queued", 0, 4, "5.06"))
        task.status = .inProgress
        task.progressStep = 15
        task.progressTotal = 30
        video = VideoObject(task: task, queuePosition: nil, fps: 16, videoTTL: .seconds(60))
        #expect((video.status, video.progress, video.queuePosition) == ("in_progress", 50, nil))
        task.status = .cancelled
        task.reason = "cancelled by the client"
        task.finishedAt = Date(timeIntervalSince1970: 1_100)
        video = VideoObject(task: task, queuePosition: nil, fps: 16, videoTTL: .seconds(60))
        #expect((video.status, video.error?.code, video.completedAt, video.expiresAt) == ("failed", "cancelled", 1_100, nil))
        task.status = .failed
        task.reason = "inference failed: boom"
        video = VideoObject(task: task, queuePosition: nil, fps: 16, videoTTL: .seconds(60))
        #expect(video.error == .init(code: "generation_failed", message: "inference failed: boom"))
        task.status = .succeed
        task.reason = nil
        task.result = TaskResult(videoName: "v", width: 832, height: 464, numFrames: 81, fps: 16, inferenceSeconds: 1, encodeSeconds: 0)
        video = VideoObject(task: task, queuePosition: nil, fps: 16, videoTTL: .seconds(60))
        #expect((video.status, video.progress, video.size, video.expiresAt, video.error) == ("completed", 100, "832x464", 1_160, nil))
    }
}

// MARK: Helpers

enum FormPart {
    case text(String, String)
    case file(String, [UInt8], filename: String, contentType: String)

    var part: MultipartPart {
        switch self {
        case .text(let name, let value):
            return MultipartPart(headers: ["Content-Disposition": "form-data; name=\"\(name)\""], body: value)
        case .file(let name, let bytes, let filename, let contentType):
            return MultipartPart(
                headers: ["Content-Disposition": "form-data; name=\"\(name)\"; filename=\"\(filename)\"", "Content-Type": contentType],
                body: bytes
            )
        }
    }
}

extension TestClientProtocol {
    func v1(_ method: HTTPRequest.Method, _ path: String, key: String = TestKeys.alice) async throws -> TestResponse {
        try await execute(uri: path, method: method, headers: [.authorization: "Bearer \(key)"])
    }

    func createVideo(json: [String: Any], key: String = TestKeys.alice) async throws -> TestResponse {
        let body = try JSONSerialization.data(withJSONObject: json)
        return try await execute(
            uri: "/v1/videos", method: .post,
            headers: [.authorization: "Bearer \(key)", .contentType: "application/json"],
            body: ByteBuffer(bytes: body)
        )
    }

    /// A multipart create, encoded by MultipartKit as a client library would.
    func createVideo(form: [FormPart], key: String = TestKeys.alice) async throws -> TestResponse {
        let boundary = "i2v-\(UUID().uuidString)"
        var body = ByteBuffer()
        try MultipartSerializer().serialize(parts: form.map(\.part), boundary: boundary, into: &body)
        return try await execute(
            uri: "/v1/videos", method: .post,
            headers: [.authorization: "Bearer \(key)", .contentType: "multipart/form-data; boundary=\(boundary)"],
            body: body
        )
    }
}

extension TestResponse {
    /// The `error` object of an OpenAI-shaped error body.
    func openAIError(sourceLocation: SourceLocation = #_sourceLocation) throws -> [String: Any] {
        try #require(try jsonObject()["error"] as? [String: Any], "not an OpenAI error: \(String(buffer: body))", sourceLocation: sourceLocation)
    }
}
