/*
 * ARX 3.9 on ARX's adult.csv with ARX's own hierarchies: the reference figures that deidpipe's lattice search
 * (deidpipe/risk/generalise.py) is compared with. See README.md beside this file for how to build and run it.
 *
 *   java -cp ARX_CLASSES:. ArxAdult anonymise ADULT.csv HIERARCHY_DIR [OUT_DIR] -> JSON of the settings
 *                                                 (and ARX's released tables as OUT_DIR/arx_SETTING.csv)
 *   java -cp ARX_CLASSES:. ArxAdult score TABLE.csv QI1,QI2,... THRESHOLD     -> JSON of ARX's risk figures
 *
 * Settings (suppression limit 5%, quality model Metric.createLossMetric(), i.e. MetricMDNMLoss with
 * gs-factor 0.5 and the geometric mean over attributes, ARX's default for "Loss"):
 *   k5, k10           new KAnonymity(k)
 *   avg0.2, avg0.1    new AverageReidentificationRisk(r): the average prosecutor risk (1 / average class size)
 *   highest0.2        new AverageReidentificationRisk(1.0, 0.2, 0.0): no record with a risk above 0.2
 *                     (a cross-check: the same classes must go as for k5)
 * Every attribute but salary-class is a quasi-identifier; salary-class is insensitive.
 */

import java.io.File;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.Iterator;
import java.util.List;
import java.util.Locale;
import java.util.Set;

import org.deidentifier.arx.ARXAnonymizer;
import org.deidentifier.arx.ARXConfiguration;
import org.deidentifier.arx.ARXLattice;
import org.deidentifier.arx.ARXLattice.ARXNode;
import org.deidentifier.arx.ARXPopulationModel;
import org.deidentifier.arx.ARXResult;
import org.deidentifier.arx.AttributeType;
import org.deidentifier.arx.AttributeType.Hierarchy;
import org.deidentifier.arx.Data;
import org.deidentifier.arx.DataHandle;
import org.deidentifier.arx.criteria.AverageReidentificationRisk;
import org.deidentifier.arx.criteria.KAnonymity;
import org.deidentifier.arx.criteria.PrivacyCriterion;
import org.deidentifier.arx.metric.Metric;
import org.deidentifier.arx.risk.RiskModelSampleRisks;
import org.deidentifier.arx.risk.RiskModelSampleSummary;

public class ArxAdult {

    static final String[] QIS = {"sex", "age", "race", "marital-status", "education", "native-country",
                                 "workclass", "occupation"};
    static final double SUPPRESSION = 0.05d;
    static final double THRESHOLD = 0.2d;

    public static void main(String[] args) throws Exception {
        if ((args.length == 3 || args.length == 4) && args[0].equals("anonymise")) {
            anonymise(new File(args[1]), new File(args[2]), args.length == 4 ? new File(args[3]) : null);
        } else if (args.length == 4 && args[0].equals("score")) {
            score(new File(args[1]), args[2].split(","), Double.parseDouble(args[3]));
        } else {
            System.err.println("usage: ArxAdult anonymise ADULT.csv HIERARCHY_DIR [OUT_DIR] | "
                               + "score TABLE.csv QIS THRESHOLD");
            System.exit(2);
        }
    }

    static Data load(File adult, File hierarchies) throws Exception {
        Data data = Data.create(adult, StandardCharsets.UTF_8, ';');
        for (String qi : QIS) {
            File file = new File(hierarchies, "adult_hierarchy_" + qi + ".csv");
            data.getDefinition().setAttributeType(qi, Hierarchy.create(file, StandardCharsets.UTF_8, ';'));
        }
        data.getDefinition().setAttributeType("salary-class", AttributeType.INSENSITIVE_ATTRIBUTE);
        return data;
    }

    static void anonymise(File adult, File hierarchies, File outDir) throws Exception {
        String[] names = {"k5", "k10", "avg0.2", "avg0.1", "highest0.2"};
        PrivacyCriterion[] models = {new KAnonymity(5), new KAnonymity(10), new AverageReidentificationRisk(0.2d),
                                     new AverageReidentificationRisk(0.1d),
                                     new AverageReidentificationRisk(1.0d, 0.2d, 0.0d)};
        StringBuilder out = new StringBuilder();
        out.append("{\n  \"arx_version\": \"").append(ARXAnonymizer.VERSION).append("\",\n");
        out.append("  \"java\": \"").append(System.getProperty("java.version")).append("\",\n");
        out.append("  \"quasi_identifiers\": ").append(jsonList(QIS)).append(",\n");
        out.append("  \"suppression_limit\": ").append(SUPPRESSION).append(",\n");
        out.append("  \"metric\": \"Metric.createLossMetric() = MetricMDNMLoss(gsFactor 0.5, GEOMETRIC_MEAN)\",\n");
        out.append("  \"settings\": {\n");
        for (int i = 0; i < names.length; i++) {
            // A fresh Data per run: ARX locks a Data's definition once it has been anonymised.
            Data data = load(adult, hierarchies);
            ARXConfiguration config = ARXConfiguration.create();
            config.addPrivacyModel(models[i]);
            config.setSuppressionLimit(SUPPRESSION);
            config.setQualityModel(Metric.createLossMetric());
            ARXAnonymizer anonymizer = new ARXAnonymizer();
            long start = System.nanoTime();
            ARXResult result = anonymizer.anonymize(data, config);
            double seconds = (System.nanoTime() - start) / 1e9;
            if (outDir != null) {
                result.getOutput().save(new File(outDir, "arx_" + names[i] + ".csv"), ';');
            }
            out.append("    \"").append(names[i]).append("\": ").append(describe(models[i], result, seconds));
            out.append(i + 1 < names.length ? ",\n" : "\n");
        }
        out.append("  }\n}\n");
        System.out.print(out);
    }

    static String describe(PrivacyCriterion model, ARXResult result, double seconds) {
        ARXNode optimum = result.getGlobalOptimum();
        ARXLattice lattice = result.getLattice();
        DataHandle output = result.getOutput();
        int suppressed = 0;
        for (int row = 0; row < output.getNumRows(); row++) {
            if (output.isOutlier(row)) {
                suppressed++;
            }
        }
        int checked = 0;
        int nodes = 0;
        for (ARXNode[] level : lattice.getLevels()) {
            for (ARXNode node : level) {
                nodes++;
                if (node.isChecked()) {
                    checked++;
                }
            }
        }
        StringBuilder s = new StringBuilder("{\n");
        s.append("      \"criterion\": \"").append(model.toString()).append("\",\n");
        s.append("      \"levels\": {");
        int[] levels = optimum.getTransformation();
        String[] qis = optimum.getQuasiIdentifyingAttributes();
        for (int d = 0; d < qis.length; d++) {
            s.append(d == 0 ? "" : ", ").append('"').append(qis[d]).append("\": ").append(levels[d]);
        }
        s.append("},\n");
        s.append("      \"suppressed\": ").append(suppressed).append(",\n");
        s.append("      \"released_sha256\": \"").append(canonicalHash(output)).append("\",\n");
        s.append("      \"loss\": ").append(optimum.getHighestScore().toString()).append(",\n");
        s.append("      \"loss_lowest_score\": ").append(optimum.getLowestScore().toString()).append(",\n");
        s.append("      \"loss_relative\": ").append(num(optimum.getHighestScore().relativeTo(
                lattice.getLowestScore(), lattice.getHighestScore()))).append(",\n");
        s.append("      \"lattice_lowest_score\": ").append(lattice.getLowestScore().toString()).append(",\n");
        s.append("      \"lattice_highest_score\": ").append(lattice.getHighestScore().toString()).append(",\n");
        s.append("      \"lattice_nodes\": ").append(nodes).append(",\n");
        s.append("      \"nodes_checked\": ").append(checked).append(",\n");
        s.append("      \"seconds\": ").append(num(seconds)).append(",\n");
        s.append("      \"risk_after\": ").append(risks(output, new HashSet<String>(java.util.Arrays.asList(QIS)),
                                                             THRESHOLD, "      ")).append("\n");
        s.append("    }");
        return s.toString();
    }

    /** ARX's sample-based risk figures of a handle (input or output), as its risk analysis shows them. */
    static String risks(DataHandle handle, Set<String> qis, double threshold, String indent) {
        ARXPopulationModel population = ARXPopulationModel.create(handle.getNumRows(), 0.1d);
        RiskModelSampleSummary summary = handle.getRiskEstimator(population, qis).getSampleBasedRiskSummary(threshold);
        RiskModelSampleRisks sample = handle.getRiskEstimator(population, qis).getSampleBasedReidentificationRisk();
        StringBuilder s = new StringBuilder("{\n");
        s.append(indent).append("  \"threshold\": ").append(threshold).append(",\n");
        s.append(indent).append("  \"prosecutor\": {\"records_at_risk\": ")
         .append(num(summary.getProsecutorRisk().getRecordsAtRisk()))
         .append(", \"highest_risk\": ").append(num(summary.getProsecutorRisk().getHighestRisk()))
         .append(", \"success_rate\": ").append(num(summary.getProsecutorRisk().getSuccessRate())).append("},\n");
        s.append(indent).append("  \"journalist\": {\"records_at_risk\": ")
         .append(num(summary.getJournalistRisk().getRecordsAtRisk()))
         .append(", \"highest_risk\": ").append(num(summary.getJournalistRisk().getHighestRisk()))
         .append(", \"success_rate\": ").append(num(summary.getJournalistRisk().getSuccessRate())).append("},\n");
        s.append(indent).append("  \"marketer\": {\"success_rate\": ")
         .append(num(summary.getMarketerRisk().getSuccessRate())).append("},\n");
        s.append(indent).append("  \"estimated_prosecutor_risk\": ").append(num(sample.getEstimatedProsecutorRisk()))
         .append(",\n");
        s.append(indent).append("  \"average_risk\": ").append(num(sample.getAverageRisk())).append("\n");
        s.append(indent).append("}");
        return s.toString();
    }

    static void score(File table, String[] qis, double threshold) throws Exception {
        char separator = firstLineSeparator(table);
        Data data = Data.create(table, StandardCharsets.UTF_8, separator);
        Set<String> set = new HashSet<String>();
        for (String qi : qis) {
            data.getDefinition().setAttributeType(qi, AttributeType.QUASI_IDENTIFYING_ATTRIBUTE);
            set.add(qi);
        }
        DataHandle handle = data.getHandle();
        System.out.println(risks(handle, set, threshold, ""));
    }

    /**
     * SHA-256 of the released table in a canonical form (header and rows, cells joined by ';', lines by '\n',
     * no final newline), so that a test can compare deidpipe's release with ARX's without a CSV writer's quirks.
     */
    static String canonicalHash(DataHandle handle) {
        try {
            java.security.MessageDigest digest = java.security.MessageDigest.getInstance("SHA-256");
            StringBuilder text = new StringBuilder();
            for (int col = 0; col < handle.getNumColumns(); col++) {
                text.append(col == 0 ? "" : ";").append(handle.getAttributeName(col));
            }
            for (int row = 0; row < handle.getNumRows(); row++) {
                text.append('\n');
                for (int col = 0; col < handle.getNumColumns(); col++) {
                    text.append(col == 0 ? "" : ";").append(handle.getValue(row, col));
                }
            }
            StringBuilder hex = new StringBuilder();
            for (byte b : digest.digest(text.toString().getBytes(StandardCharsets.UTF_8))) {
                hex.append(String.format("%02x", b));
            }
            return hex.toString();
        } catch (java.security.NoSuchAlgorithmException e) {
            throw new IllegalStateException(e);
        }
    }

    static char firstLineSeparator(File table) throws Exception {
        try (java.io.BufferedReader reader = java.nio.file.Files.newBufferedReader(table.toPath())) {
            String head = reader.readLine();
            return head != null && head.indexOf(';') >= 0 ? ';' : ',';
        }
    }

    static String jsonList(String[] values) {
        List<String> quoted = new ArrayList<String>();
        for (String v : values) {
            quoted.add("\"" + v + "\"");
        }
        return "[" + String.join(", ", quoted) + "]";
    }

    static String num(double value) {
        return Double.isNaN(value) || Double.isInfinite(value) ? "null" : String.format(Locale.ROOT, "%s", value);
    }
}
