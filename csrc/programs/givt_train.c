// givt-train: trains GIVT as configured by an INI file plus "section.key=value" overrides.
#include <stdio.h>
#include <string.h>

#include "backend.h"
#include "dist.h"
#include "stop_signal.h"
#include "trainer.h"

#define GIVT_VERSION "0.1.0"

static void usage(FILE *out) {
    fprintf(out,
            "usage: givt-train CONFIG.ini [section.key=value ...]\n"
            "       givt-train --help | --version\n\n"
            "Trains GIVT on the configured data; checkpoints go to [train] out_dir.\n"
            "Keys (section, default, description):\n\n");
    train_config_help(out);
}

int main(int argc, char **argv) {
    if (stop_signals_init("givt-train") != 0) {  // before any thread: every thread inherits the blocked mask
        fprintf(stderr, "givt-train: %s\n", givt_last_error());
        return 1;
    }
    stop_signals_notice("stopping after this micro-batch (press Ctrl-C again to quit without a checkpoint)",
                        "quitting at once, without a checkpoint of this step");
    if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        usage(stdout);
        return 0;
    }
    if (argc >= 2 && !strcmp(argv[1], "--version")) {
        printf("givt-train %s\nbackends:\n", GIVT_VERSION);
        for (int i = 0; i < backend_registry_count(); i++) {
            char line[320];
            const char *name = backend_registry_name(i);
            printf("  %-5s %s\n", name, backend_availability_text(name, line, sizeof line));
        }
        printf("data parallel: %s\n", dist_build_info());
        return 0;
    }
    if (argc < 2 || argv[1][0] == '-') {
        usage(stderr);
        return 2;
    }
    TrainConfig cfg;
    if (train_config_load(&cfg, argv[1], argc - 2, argv + 2) != 0) {
        fprintf(stderr, "givt-train: %s\n", givt_last_error());
        return 1;
    }
    int rc = trainer_run(&cfg);
    if (rc < 0) {
        fprintf(stderr, "givt-train: %s\n", givt_last_error());
        return 1;
    }
    return rc;
}
