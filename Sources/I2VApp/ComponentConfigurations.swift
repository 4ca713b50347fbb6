import Configuration
import Foundation
import I2VCore
import I2VGPUNode
import I2VHTTP
import I2VWebhooks
import ImageIntake
import Logging

// Each component's own configuration, cut from the service's.
extension ServiceConfiguration {
    var useCases: TaskUseCases.Configuration {
        .init(
            maxQueued: maxQueued,
            submitsPerMinute: submitsPerMinute,
            // A submit downloads its LoRAs given by URL (at most 4, one after the other) and then its image.
            idempotencyPatience: imageTimeout + (loraURLs ? loraURLTimeout * 4 : .zero) + .seconds(60),
            publicURL: publicURL,
            maxLoRARank: loraMaxRank
        )
    }

    var dispatcher: Dispatcher.Configuration {
        .init(
            node: nodeID,
            lease: lease,
            maxAttempts: maxAttempts,
            cancelGrace: cancelGrace,
            shutdownGrace: shutdownGrace,
            pollInterval: pollInterval,
            loraSetHold: loraSetHold
        )
    }

    var sweeper: ResultSweeper.Configuration {
        .init(videoTTL: videoTTL, taskRetention: taskRetention, interval: sweepInterval)
    }

    var imageIntake: ImageIntakeConfiguration {
        ImageIntakeConfiguration(
            timeout: imageTimeout,
            connectTimeout: min(.seconds(5), imageTimeout),
            maxBytes: imageMaxBytes,
            maxPixels: imageMaxPixels,
            maxRedirects: 3,
            allowPrivateHosts: allowPrivateImageHosts
        )
    }

    var api: APIConfiguration {
        .init(
            maxBodyBytes: maxBodyBytes, imageMaxBytes: imageMaxBytes, publicURL: publicURL, streamKeepAlive: streamKeepAlive,
            videosDirectory: videosDirectory, videoTTL: videoTTL, uploadSpoolDirectory: uploadSpoolDirectory
        )
    }
}

extension WebhookDeliveryService {
    /// The node's delivery service as the configuration sets it: the secret loaded (or generated), URLs
    /// checked with the image URLs' address rules.
    init(outbox: any WebhookOutbox, configuration: ServiceConfiguration, metrics: ServiceMetrics, logger: Logger) throws {
        let signer = try WebhookSecret.load(configured: configuration.webhooks.secret, dataDirectory: configuration.dataDirectory, logger: logger)
        self.init(
            outbox: outbox,
            sender: WebhookSender(
                urlGuard: OutboundGuard(allowPrivateHosts: configuration.allowPrivateImageHosts, subject: "webhook_url"),
                signer: signer,
                timeout: configuration.webhooks.timeout
            ),
            configuration: Configuration(
                settings: configuration.webhooks,
                publicURL: configuration.publicURL,
                retention: configuration.taskRetention
            ),
            wakeup: WebhookWakeup(),
            metrics: metrics,
            logger: logger
        )
    }
}

extension WebhookSettings {
    /// Reads the `webhook…` keys of the service's (already `i2v`-scoped) reader.
    init(config: ConfigReader) {
        let schedule = (config.string(forKey: "webhookRetrySeconds") ?? "")
            .split(separator: ",")
            .compactMap { Double($0.trimmingCharacters(in: .whitespaces)) }
            .filter { $0.isFinite && $0 > 0 }
            .map { Duration.seconds($0) }
        self.init(
            secret: config.string(forKey: "webhookSecret", isSecret: true).flatMap { $0.isEmpty ? nil : $0 },
            timeout: .seconds(max(0.1, config.seconds(forKey: "webhookTimeoutSeconds", default: 10))),
            concurrency: max(1, config.int(forKey: "webhookConcurrency", default: 8)),
            pollInterval: .seconds(max(0.05, config.seconds(forKey: "webhookPollSeconds", default: 1))),
            retry: WebhookRetryPolicy(
                delays: schedule.isEmpty ? Self.defaultSchedule : schedule,
                window: .seconds(max(1, config.seconds(forKey: "webhookRetryWindowSeconds", default: 86_400)))
            )
        )
    }
}
