package localnacos.dubbo;

/** The one interface the provider exports; Dubbo registers it as {@code providers:localnacos.dubbo.OrderApi::}. */
public interface OrderApi {

    String order(String id);
}
